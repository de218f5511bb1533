//! Pusher Channels mode (issue 14; PUSHER-NOTES.md; DESIGN.md "Pusher Channels
//! mode"): pusher-js, laravel-echo and the Pusher server SDKs talk to scenecast.
//!
//! - [`apps`]: the `[pusher]` settings and their validation;
//! - [`channel`]: channel names and kinds (`private-`, `presence-`, `#server-to-user-`…);
//! - [`sign`]: every HMAC check (subscriptions, sign-in, HTTP API requests, webhooks);
//! - [`protocol`]: client frames in, server frames out, the 4xxx codes;
//! - [`webhook`]: the batched, signed, retrying webhook sender.

pub mod apps;
pub mod channel;
pub mod protocol;
pub mod sign;
pub mod webhook;

pub use apps::{PusherApp, PusherSettings, WebhookTarget};
pub use channel::{Channel, ChannelError, ChannelKind};
pub use protocol::{ClientFrame, PusherCode};
pub use webhook::{WebhookEvent, WebhookOptions, WebhookSender};
