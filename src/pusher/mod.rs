//! Pusher Channels mode (issue 14; PUSHER-NOTES.md; DESIGN.md "Pusher Channels
//! mode"): pusher-js, laravel-echo and the Pusher server SDKs talk to scenecast.
//!
//! - [`api`]: the HTTP API `/apps/{id}/...` the server SDKs call;
//! - [`apps`]: the `[pusher]` settings and their validation;
//! - [`channel`]: channel names and kinds (`private-`, `presence-`, `#server-to-user-`…);
//! - [`sign`]: every HMAC check (subscriptions, sign-in, HTTP API requests, webhooks);
//! - [`protocol`]: client frames in, server frames out, the 4xxx codes;
//! - [`publisher`]: events onto the bus (channels, users, `terminate_connections`);
//! - [`trigger`]: the HTTP API's event bodies, parsed and checked;
//! - [`webhook`]: the batched, signed, retrying webhook sender;
//! - [`state`]: subscriptions, presence members, cache channels and their transitions.

pub mod api;
pub mod apps;
pub mod channel;
pub mod protocol;
pub mod publisher;
pub mod sign;
pub mod state;
pub mod trigger;
pub mod webhook;

pub use apps::{PusherApp, PusherSettings, WebhookTarget};
pub use channel::{Channel, ChannelError, ChannelKind};
pub use protocol::{ClientFrame, PusherCode};
pub use publisher::Publisher;
pub use state::{ChannelState, Member, MemberSink};
pub use webhook::{WebhookEvent, WebhookOptions, WebhookSender};
