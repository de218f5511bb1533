//! The cluster-mode history: one Redis hash names the epoch and counts offsets
//! (`{prefix}:history:epoch`, fields `epoch`, `offset`), one stream keeps the last
//! `history.size` pushes (`{prefix}:history`, entry id `<offset>-0`, fields `t`
//! target kind, `k` target key, `x` excluded connection, `e` Pusher event name
//! (empty: none), `i` presence `user_id` (empty: none), `d` payload, `ms` Redis
//! time of the publish).
//!
//! Two Lua scripts, each atomic on the Redis side:
//! - [`PUBLISH`]: finds (or, when Redis lost it, creates) the epoch, takes the next
//!   offset, appends the entry, and `PUBLISH`es the bus envelope carrying epoch and
//!   offset, with the counts the publisher reports. Because offset and `PUBLISH`
//!   happen in one script, every subscriber receives pushes in offset order.
//! - [`READ`]: the epoch and the head, and with a `since` in that epoch every entry
//!   of `(since, head]` when the stream still holds *all* of them within
//!   `history.ttl_secs`, else nothing. Offsets are contiguous, so coverage is a
//!   count; Redis 7.0's `max-deleted-entry-id` is not used (MAXLEN trimming does
//!   not update it there).
//!
//! A history that went back: Redis restarted from an older snapshot (RDB, or an
//! AOF that lost its last second) or a replica promoted before it had the last
//! writes keeps the epoch but holds a lower offset than the nodes already saw. The
//! next pushes would reuse offsets that clients hold, and a client that missed the
//! lost pushes would hear `recovered:true`. So each script also gets its caller's
//! floor, the newest position the node had from Redis (an epoch and an offset that
//! Redis handed out): the same epoch with a lower offset is a lost history, as
//! after an empty restart — a new epoch, and every reconnect in the old one is
//! `recovered:false`.
//!
//! What comes back from Redis is parsed without panicking; an entry that does not
//! parse makes the replay fail (`recovered:false`), never a partial one.

use bytestring::ByteString;
use redis::Value;

use super::{Entry, Read, Stamp};
use crate::push::{ConnKey, Name, Target};

/// The start both scripts share: `now_ms()` (Redis's clock, in milliseconds) and the
/// history's current `epoch`, made anew (stream dropped, offset 0, the candidate
/// `ARGV[1]` as its name) when Redis lost it or went back in time: the same epoch
/// with a lower offset than the caller's floor (`floor_epoch`, `floor_offset`, set by
/// each script from its own ARGV; both empty before the caller saw any). KEYS[1] is
/// the epoch hash, KEYS[2] the stream, in both scripts. One text, so the two cannot
/// disagree on what a lost history is.
macro_rules! current_epoch_lua {
    () => {
        r"
local function now_ms()
  local now = redis.call('TIME')
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and floor_epoch == epoch and tonumber(redis.call('HGET', KEYS[1], 'offset') or '0') < tonumber(floor_offset) then
  epoch = false
end
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
"
    };
}

/// `EVAL script numkeys keys...`, to which the caller adds the script's ARGV.
///
/// `EVAL` with the script's text every time, not `EVALSHA`: a publish that times
/// out while Redis is stalled may still run later, and is then skipped as an echo
/// on this node (see [`crate::bus::RedisBus`]); an `EVALSHA` that Redis answered
/// with `NOSCRIPT` after the caller gave up (its script cache was empty: the
/// first publish after a restart) would never run, and the other nodes would never
/// get the push. Redis caches the compiled script by its hash either way.
pub fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    cmd
}

/// KEYS: epoch hash, stream, count key (hash or set), nodes set.
/// ARGV: candidate epoch, size, count kind (`hlen`/`scard`/`one`), envelope head,
/// envelope tail, target kind, target key, exclude, payload, channel, event, user
/// id, and the caller's floor (see the module doc: a history that went back):
/// epoch text and offset, or two empty strings.
/// Returns `{epoch, offset, matched, nodes, listening, stream length}`.
pub const PUBLISH: &str = concat!(
    "local floor_epoch, floor_offset = ARGV[13], ARGV[14]\n",
    current_epoch_lua!(),
    r"local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local id = string.format('%d', offset)
local size = tonumber(ARGV[2])
local len = 0
if size > 0 then
  local ms = string.format('%d', now_ms())
  redis.call('XADD', KEYS[2], 'MAXLEN', size, id .. '-0',
    't', ARGV[6], 'k', ARGV[7], 'x', ARGV[8], 'e', ARGV[11], 'i', ARGV[12], 'd', ARGV[9], 'ms', ms)
  len = redis.call('XLEN', KEYS[2])
end
local matched = 1
if ARGV[3] == 'hlen' then
  matched = redis.call('HLEN', KEYS[3])
elseif ARGV[3] == 'scard' then
  matched = redis.call('SCARD', KEYS[3])
elseif ARGV[3] == 'none' then
  matched = 0
end
local nodes = redis.call('SCARD', KEYS[4])
local listening = redis.call('PUBLISH', ARGV[10], ARGV[4] .. epoch .. ':' .. id .. ':' .. ARGV[5] .. ARGV[9])
return {epoch, offset, matched, nodes, listening, len}
",
);

/// KEYS: epoch hash, stream. ARGV: candidate epoch, since's epoch (or empty),
/// since's offset (or empty), ttl in ms, and the caller's floor (see the module doc: a history that went back).
/// Returns `{epoch, head, entries or false}`.
pub const READ: &str = concat!(
    "local floor_epoch, floor_offset = ARGV[5], ARGV[6]\n",
    current_epoch_lua!(),
    r"local head = tonumber(redis.call('HGET', KEYS[1], 'offset'))
if ARGV[2] ~= epoch or ARGV[3] == '' then
  return {epoch, head, false}
end
local since = tonumber(ARGV[3])
if since == nil or since > head then
  return {epoch, head, false}
end
if since == head then
  return {epoch, head, {}}
end
local entries = redis.call('XRANGE', KEYS[2], string.format('%d', since + 1) .. '-0', string.format('%d', head) .. '-0')
if #entries ~= head - since then
  return {epoch, head, false}
end
local oldest = now_ms() - tonumber(ARGV[4])
local first = entries[1][2]
for i = 1, #first, 2 do
  if first[i] == 'ms' and tonumber(first[i + 1]) < oldest then
    return {epoch, head, false}
  end
end
return {epoch, head, entries}
",
);

/// The target fields of a stream entry and of the envelope: kind and key.
pub fn target_fields(target: &Target) -> (&'static str, String) {
    match target {
        Target::All => ("a", String::new()),
        Target::Page(page) => ("p", page.to_string()),
        Target::Uid(uid) => ("u", uid.to_string()),
        Target::Conn(conn) => ("c", conn.to_string()),
        // App ids hold no `:` (`[A-Za-z0-9._-]`), so the first `:` ends the id.
        Target::Channel(app, channel) => ("h", format!("{app}:{channel}")),
    }
}

/// The target that `kind` and `key` (see [`target_fields`]) name.
pub fn target_from_fields(kind: &str, key: &str) -> Option<Target> {
    match kind {
        "a" if key.is_empty() => Some(Target::All),
        "p" => Name::try_from(key).ok().map(Target::Page),
        "u" => Name::try_from(key).ok().map(Target::Uid),
        "c" => ConnKey::parse(key).ok().map(Target::Conn),
        "h" => {
            let (app, channel) = key.split_once(':')?;
            Some(Target::Channel(
                Name::try_from(app).ok()?,
                Name::try_from(channel).ok()?,
            ))
        }
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Parses [`READ`]'s reply. `None` when the reply is not what the script returns
/// (the caller counts it as a failed read); a replay with an entry that does not
/// parse is `replay: None`.
pub fn parse_read(reply: &Value) -> Option<Read> {
    let Value::Array(items) = reply else {
        return None;
    };
    let [epoch, head, entries] = items.as_slice() else {
        return None;
    };
    let head = Stamp {
        epoch: super::parse_epoch(text(epoch)?)?,
        offset: integer(head)?,
    };
    let replay = match entries {
        Value::Array(entries) => entries.iter().map(parse_entry).collect(),
        _ => None,
    };
    Some(Read { head, replay })
}

/// One `XRANGE` item: `[id, [field, value, ...]]`.
fn parse_entry(item: &Value) -> Option<Entry> {
    let Value::Array(parts) = item else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let offset = text(id)?.strip_suffix("-0")?.parse().ok()?;
    let (mut kind, mut key, mut exclude, mut payload) = (None, None, None, None);
    let (mut event, mut user_id) = ("", "");
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return None;
        };
        match text(name)? {
            "t" => kind = text(value),
            "k" => key = text(value),
            "x" => exclude = text(value),
            "d" => payload = text(value),
            "e" => event = text(value)?,
            "i" => user_id = text(value)?,
            _ => {}
        }
    }
    let exclude = match exclude? {
        "" => None,
        text => Some(ConnKey::parse(text).ok()?),
    };
    Some(Entry {
        offset,
        target: target_from_fields(kind?, key?)?,
        exclude,
        event: optional(event, |e| crate::push::EventName::try_from(e).ok())?,
        user_id: optional(user_id, |u| Name::try_from(u).ok())?,
        payload: ByteString::from(payload?.to_owned()),
    })
}

/// An optional field's text: empty is `Some(None)`, a valid value `Some(Some(_))`,
/// anything else `None` (the entry does not parse).
pub fn optional<T>(text: &str, parse: impl FnOnce(&str) -> Option<T>) -> Option<Option<T>> {
    if text.is_empty() {
        Some(None)
    } else {
        parse(text).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn read_replies_parse_and_bad_entries_fail_the_whole_replay() {
        let good = entry(
            "5-0",
            &[
                ("t", "p"),
                ("k", "home"),
                ("x", "1.2"),
                ("d", "{}"),
                ("ms", "1"),
            ],
        );
        let reply = Value::Array(vec![
            bulk("00000000deadbeef"),
            Value::Int(5),
            Value::Array(vec![good.clone()]),
        ]);
        let read = parse_read(&reply).unwrap();
        assert_eq!(
            read.head,
            Stamp {
                epoch: 0xdeadbeef,
                offset: 5
            }
        );
        let entries = read.replay.unwrap();
        assert_eq!(entries[0].offset, 5);
        assert_eq!(entries[0].exclude, Some(ConnKey { node: 1, local: 2 }));
        assert_eq!(
            entries[0].target,
            Target::Page(Name::try_from("home").unwrap())
        );

        let bad = entry("6-0", &[("t", "z"), ("k", ""), ("x", ""), ("d", "{}")]);
        let reply = Value::Array(vec![
            bulk("00000000deadbeef"),
            Value::Int(6),
            Value::Array(vec![good, bad]),
        ]);
        assert_eq!(parse_read(&reply).unwrap().replay, None);

        let not_asked = Value::Array(vec![bulk("00000000deadbeef"), Value::Int(6), Value::Nil]);
        assert_eq!(parse_read(&not_asked).unwrap().replay, None);
        assert!(parse_read(&Value::Int(1)).is_none());
        assert!(
            parse_read(&Value::Array(vec![
                bulk("nothex"),
                Value::Int(1),
                Value::Nil
            ]))
            .is_none()
        );
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<i64>().prop_map(Value::Int),
            "[0-9a-f]{16}|[0-9]{1,3}-0|[tkxd]|ms|\\PC{0,8}".prop_map(|t| bulk(&t)),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(Value::Array)
        })
    }

    proptest! {
        #[test]
        fn any_reply_parses_without_panic(reply in value()) {
            let _ = parse_read(&reply);
        }

        #[test]
        fn target_fields_round_trip(kind in "[apuc]", key in "[0-9]{1,3}\\.[0-9]{1,3}|\\PC{0,10}") {
            if let Some(target) = target_from_fields(&kind, &key) {
                let (k, text) = target_fields(&target);
                prop_assert_eq!(target_from_fields(k, &text), Some(target));
            }
        }
    }
}
