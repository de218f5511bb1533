//! The channel state in Redis (cluster mode). Not built yet: the embedded state is
//! the only mode until this lands (no value of this type can be made).

use std::convert::Infallible;

use super::{CachedEvent, ChannelSummary, Member, Subscribed};
use crate::push::ConnKey;
use crate::pusher::channel::Channel;

pub(super) struct RedisState {
    never: Infallible,
}

impl RedisState {
    pub(super) async fn subscribe(
        &self,
        _app: &str,
        _channel: &Channel,
        _socket: ConnKey,
        _member: Option<Member>,
    ) -> Option<Subscribed> {
        match self.never {}
    }
    pub(super) fn left(&self, _app: &str, _channel: &Channel, _socket: ConnKey) {
        match self.never {}
    }
    pub(super) async fn view(&self, _app: &str, _channel: &Channel) -> Option<Subscribed> {
        match self.never {}
    }
    pub(super) async fn channels(&self, _app: &str, _prefix: &str) -> Option<Vec<ChannelSummary>> {
        match self.never {}
    }
    pub(super) async fn cache_last(
        &self,
        _app: &str,
        _channel: &Channel,
    ) -> Option<Option<CachedEvent>> {
        match self.never {}
    }
    pub(super) fn cache_store(&self, _app: &str, _channel: &Channel, _cached: &CachedEvent) {
        match self.never {}
    }
    pub(super) async fn shutdown(&self) {
        match self.never {}
    }
}
