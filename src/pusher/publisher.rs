//! [`Publisher`]: how the Pusher side (gateway, HTTP API, channel state) sends
//! events, through the same bus as every native push (DESIGN.md "Pusher Channels
//! mode"; PUSHER-PLAN "Wave 2" interface 1).
//!
//! A channel of the bridged app is the native page of the same name
//! ([`Target::Page`]): its events reach native page connections too (the `data`
//! string as the frame text); a channel of another app is [`Target::Channel`].

use std::sync::Arc;

use bytestring::ByteString;

use crate::bus::{Bus, Published};
use crate::push::{AppSlot, ConnKey, EventName, Name, Push, Target};
use crate::pusher::{Channel, ChannelState, PusherApp, PusherSettings};

/// A narrow, cheap-to-clone handle over the bus for Pusher events.
#[derive(Clone)]
pub struct Publisher {
    bus: Bus,
    /// The bridged app's id (`[pusher]` `bridge = true`, or the only app).
    bridged: Option<AppSlot>,
    settings: Arc<PusherSettings>,
    /// The apps, shared: every Pusher connection holds its app by this `Arc`
    /// rather than a copy (a few hundred bytes per idle connection).
    apps: Arc<[Arc<PusherApp>]>,
    /// Where events on cache channels are kept (`cache_store`).
    channels: ChannelState,
}

impl Publisher {
    /// The publisher of `settings`' apps; it also becomes `channels`' member sink
    /// (`pusher_internal:member_added` / `_removed` go out through it).
    pub fn new(bus: Bus, settings: &PusherSettings, channels: ChannelState) -> Self {
        let publisher = Self {
            bus,
            bridged: settings
                .bridged()
                .and_then(|app| Name::try_from(app.id.as_str()).ok()),
            settings: Arc::new(settings.clone()),
            apps: settings.apps.iter().cloned().map(Arc::new).collect(),
            channels: channels.clone(),
        };
        // Through one ordered queue: a quick join and leave must not arrive as
        // leave then join.
        channels.set_sink(crate::pusher::state::PublisherSink::start(
            publisher.clone(),
            settings,
        ));
        publisher
    }

    /// The app whose WebSocket key is `key` (`/app/{key}`), shared.
    pub fn app_by_key(&self, key: &str) -> Option<Arc<PusherApp>> {
        self.apps.iter().find(|app| app.key == key).cloned()
    }

    /// The bridged app, whose public channels are the native pages.
    pub fn bridged_app(&self) -> Option<&PusherApp> {
        let id = self.bridged.as_deref()?;
        self.settings.by_id(id)
    }

    /// Keeps a native push to page `page` as the last event of the bridged app's
    /// cache channel of that name (`cache-…`), as a Pusher event there would be.
    pub fn cache_native(&self, page: &Name, event: &str, data: &str) {
        if let Some(app) = self.bridged_app()
            && let Ok(channel) = Channel::parse(page)
            && channel.kind().is_cache()
        {
            self.channels.cache_store(&app.id, &channel, event, data);
        }
    }

    /// `app`'s id as a [`AppSlot`] (checked at start to be a name; `None` never
    /// happens for a configured app).
    pub fn slot(app: &PusherApp) -> Option<AppSlot> {
        Name::try_from(app.id.as_str()).ok()
    }

    /// Whether `app`'s public channels are the native pages.
    pub fn is_bridged(&self, app: &PusherApp) -> bool {
        self.bridged.as_deref() == Some(app.id.as_str())
    }

    /// The target of an event on `channel` of `app`.
    pub fn target(&self, app: &PusherApp, channel: &Channel) -> Option<Target> {
        let name = Name::try_from(channel.as_str()).ok()?;
        Some(if self.is_bridged(app) {
            Target::Page(name)
        } else {
            Target::Channel(Self::slot(app)?, name)
        })
    }

    /// Sends `event` with `data` (the `data` string as given: subscribers get it
    /// as the JSON string `"data"`, native page connections as the frame text) to
    /// every subscriber of `channel` cluster-wide, except connection `exclude`
    /// (the `socket_id` of the API call, or a client event's sender).
    pub async fn publish_event(
        &self,
        app: &PusherApp,
        channel: &Channel,
        event: EventName,
        data: ByteString,
        exclude: Option<ConnKey>,
    ) -> Published {
        self.publish_as(app, channel, event, data, exclude, None)
            .await
    }

    /// [`Publisher::publish_event`] carrying `user_id` (a presence client event:
    /// pusher-js gives it to the handler as `metadata.user_id`).
    pub async fn publish_as(
        &self,
        app: &PusherApp,
        channel: &Channel,
        event: EventName,
        data: ByteString,
        exclude: Option<ConnKey>,
        user_id: Option<Name>,
    ) -> Published {
        let Some(target) = self.target(app, channel) else {
            return nothing();
        };
        self.channels.cache_store(&app.id, channel, &event, &data);
        let mut push = Push::new(target, data)
            .excluding(exclude)
            .with_event(Some(event));
        push.user_id = user_id;
        self.bus.publish(push).await
    }

    /// Sends `event` to user `uid`'s signed-in connections subscribed to
    /// `#server-to-user-{uid}` (pusher-js `user.ts` does so after sign-in); for the
    /// bridged app this is a uid push, so native connections of that uid get the
    /// `data` too.
    pub async fn publish_to_user(
        &self,
        app: &PusherApp,
        uid: &Name,
        event: EventName,
        data: ByteString,
    ) -> Published {
        let target = if self.is_bridged(app) {
            Target::Uid(uid.clone())
        } else {
            let Some(channel) = Channel::server_to_user(uid)
                .ok()
                .and_then(|c| Name::try_from(c.as_str()).ok())
            else {
                return nothing();
            };
            let Some(slot) = Self::slot(app) else {
                return nothing();
            };
            Target::Channel(slot, channel)
        };
        self.bus
            .publish(Push::new(target, data).with_event(Some(event)))
            .await
    }

    /// Closes user `uid`'s signed-in connections of `app` on every node, with
    /// 4009 (`terminate_connections`). False when Redis did not take the message
    /// (this node's connections are closed anyway).
    pub async fn terminate_user(&self, app: &PusherApp, uid: &Name) -> bool {
        match Self::slot(app) {
            Some(slot) => self.bus.terminate_user(&slot, uid).await,
            None => false,
        }
    }
}

fn nothing() -> Published {
    Published {
        delivered: 0,
        cluster_wide: true,
        stamp: None,
    }
}
