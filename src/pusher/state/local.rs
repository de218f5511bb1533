//! This process's channel map: the whole truth in embedded mode, this node's share
//! (and the source of a resync) in Redis mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::{CachedEvent, ChannelInfo, ChannelSummary, Member, Presence, Subscribed, Transition};
use crate::push::ConnKey;
use crate::pusher::channel::Channel;

/// How long a cache channel keeps its last event (Pusher keeps it 30 minutes).
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);
/// Cache channels kept at most in memory; past it expired entries are dropped and,
/// if still full, the new event is not kept (a flood of channel names must not grow
/// memory for half an hour).
const CACHE_MAX: usize = 100_000;

#[derive(Default)]
struct User {
    connections: usize,
    info: Option<Arc<RawValue>>,
}

#[derive(Default)]
struct Entry {
    /// Socket → its user on presence channels.
    sockets: HashMap<ConnKey, Option<Arc<str>>>,
    /// Presence: user id → connections and the first connection's `user_info`.
    users: BTreeMap<Arc<str>, User>,
}

impl Entry {
    fn presence(&self) -> Presence {
        Presence {
            members: self
                .users
                .iter()
                .map(|(id, user)| (id.clone(), user.info.clone().unwrap_or_else(null)))
                .collect(),
        }
    }
}

fn null() -> Arc<RawValue> {
    Arc::from(RawValue::NULL.to_owned())
}

#[derive(Default)]
pub(super) struct Local {
    apps: HashMap<Arc<str>, HashMap<Channel, Entry>>,
    cache: HashMap<(Arc<str>, Channel), (Instant, CachedEvent)>,
}

impl Local {
    pub(super) fn subscribe(
        &mut self,
        app: &str,
        channel: &Channel,
        socket: ConnKey,
        member: Option<Member>,
    ) -> (Subscribed, Vec<Transition>) {
        let channels = match self.apps.get_mut(app) {
            Some(channels) => channels,
            None => self.apps.entry(Arc::from(app)).or_default(),
        };
        let entry = channels.entry(channel.clone()).or_default();
        let mut transitions = Vec::new();
        let new = !entry.sockets.contains_key(&socket);
        if new {
            if entry.sockets.is_empty() {
                transitions.push(Transition::Occupied);
            }
            let user_id = member.as_ref().map(|m| m.user_id.clone());
            entry.sockets.insert(socket, user_id);
            if let Some(member) = member {
                let user = entry.users.entry(member.user_id.clone()).or_default();
                user.connections += 1;
                if user.connections == 1 {
                    user.info = Some(member.user_info.clone());
                    transitions.push(Transition::MemberAdded {
                        user_id: member.user_id,
                        user_info: member.user_info.get().to_string(),
                        joiner: Some(socket),
                    });
                }
            }
        }
        let subscribed = Subscribed {
            new,
            presence: channel.kind().is_presence().then(|| entry.presence()),
            subscription_count: entry.sockets.len(),
            cluster_wide: true,
        };
        (subscribed, transitions)
    }

    /// `None` when `socket` was not subscribed.
    pub(super) fn left(
        &mut self,
        app: &str,
        channel: &Channel,
        socket: ConnKey,
    ) -> Option<Vec<Transition>> {
        let channels = self.apps.get_mut(app)?;
        let entry = channels.get_mut(channel)?;
        let user_id = entry.sockets.remove(&socket)?;
        let mut transitions = Vec::new();
        if let Some(user_id) = user_id
            && let Some(user) = entry.users.get_mut(&user_id)
        {
            user.connections = user.connections.saturating_sub(1);
            if user.connections == 0 {
                entry.users.remove(&user_id);
                transitions.push(Transition::MemberRemoved { user_id });
            }
        }
        if entry.sockets.is_empty() {
            channels.remove(channel);
            transitions.push(Transition::Vacated);
            if channels.is_empty() {
                self.apps.remove(app);
            }
        }
        Some(transitions)
    }

    pub(super) fn info(&self, app: &str, channel: &Channel) -> ChannelInfo {
        let entry = self.apps.get(app).and_then(|c| c.get(channel));
        let subscription_count = entry.map_or(0, |e| e.sockets.len());
        ChannelInfo {
            occupied: subscription_count > 0,
            subscription_count,
            user_count: channel
                .kind()
                .is_presence()
                .then(|| entry.map_or(0, |e| e.users.len())),
            cluster_wide: true,
        }
    }

    pub(super) fn channels(&self, app: &str, prefix: &str) -> Vec<ChannelSummary> {
        let mut list: Vec<ChannelSummary> = self
            .apps
            .get(app)
            .into_iter()
            .flatten()
            .filter(|(channel, _)| channel.as_str().starts_with(prefix))
            .map(|(channel, entry)| ChannelSummary {
                channel: channel.to_string(),
                subscription_count: entry.sockets.len(),
                user_count: channel.kind().is_presence().then_some(entry.users.len()),
            })
            .collect();
        list.sort_by(|a, b| a.channel.cmp(&b.channel));
        list
    }

    pub(super) fn users(&self, app: &str, channel: &Channel) -> Vec<Arc<str>> {
        self.apps
            .get(app)
            .and_then(|c| c.get(channel))
            .map(|e| e.users.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every subscription this node holds, with its member (a Redis resync writes
    /// them).
    pub(super) fn snapshot(&self) -> Vec<(Arc<str>, Channel, ConnKey, Option<Member>)> {
        let mut out = Vec::new();
        for (app, channels) in &self.apps {
            for (channel, entry) in channels {
                for (socket, user_id) in &entry.sockets {
                    let member = user_id.as_ref().map(|id| Member {
                        user_id: id.clone(),
                        user_info: entry
                            .users
                            .get(id)
                            .and_then(|u| u.info.clone())
                            .unwrap_or_else(null),
                    });
                    out.push((app.clone(), channel.clone(), *socket, member));
                }
            }
        }
        out
    }

    /// The subscriptions of one channel held here (a presence view when Redis is
    /// down).
    pub(super) fn view(&self, app: &str, channel: &Channel) -> Subscribed {
        let entry = self.apps.get(app).and_then(|c| c.get(channel));
        Subscribed {
            new: false,
            presence: channel
                .kind()
                .is_presence()
                .then(|| entry.map(Entry::presence).unwrap_or_default()),
            subscription_count: entry.map_or(0, |e| e.sockets.len()),
            cluster_wide: false,
        }
    }

    pub(super) fn cache_last(&self, app: &str, channel: &Channel) -> Option<CachedEvent> {
        let (at, cached) = self.cache.get(&(Arc::from(app), channel.clone()))?;
        (at.elapsed() < CACHE_TTL).then(|| cached.clone())
    }

    pub(super) fn cache_store(&mut self, app: &str, channel: &Channel, cached: CachedEvent) {
        let key = (Arc::from(app), channel.clone());
        if self.cache.len() >= CACHE_MAX && !self.cache.contains_key(&key) {
            self.cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if self.cache.len() >= CACHE_MAX {
                return;
            }
        }
        self.cache.insert(key, (Instant::now(), cached));
    }

    /// Occupied channels and presence members held here.
    pub(super) fn counts(&self) -> (usize, usize) {
        self.apps
            .values()
            .flat_map(HashMap::values)
            .fold((0, 0), |(channels, members), entry| {
                (channels + 1, members + entry.users.len())
            })
    }
}
