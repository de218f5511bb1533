//! The func handler table: `GET /?func=NAME` looks NAME up here and gets a ready
//! [`Push`]. Each scene is compiled once at start into a template whose literal
//! parts are already JSON text, so rendering a push is a few string appends:
//! `{param}` holes are filled from the trigger's query, JSON-escaped.

use std::collections::HashMap;

use crate::config::{ConfigError, SceneConfig};
use crate::edge::Query;
use crate::push::{Name, NameError, Push, Target};

/// Parameters that never reach a payload or a target: the trigger's own
/// `func` and the API `token` (a secret that would otherwise land in browsers).
const RESERVED_PARAMS: [&str; 2] = ["func", "token"];

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    /// Text copied as is (already JSON-encoded in message templates).
    Literal(String),
    /// A query parameter's value.
    Param(String),
}

/// A string with `{param}` holes.
#[derive(Debug, Clone, PartialEq)]
struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Renders with each param's value passed through `escape`.
    fn render(
        &self,
        params: &Params,
        out: &mut String,
        escape: fn(&str, &mut String),
    ) -> Result<(), SceneError> {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Param(name) => {
                    let value = params
                        .get(name)
                        .ok_or_else(|| SceneError::MissingParam(name.clone()))?;
                    escape(value, out);
                }
            }
        }
        Ok(())
    }
}

/// Splits `text` into literals and `{name}` holes (`name` = letters, digits, `_`).
/// Anything else in braces stays literal, so JSON-looking text is left alone.
fn split_params(text: &str, mut literal: impl FnMut(&str, &mut Vec<Piece>)) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('{') {
        let name_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let (name, tail) = after.split_at_checked(name_len).unwrap_or((after, ""));
        match tail.strip_prefix('}') {
            Some(tail) if !name.is_empty() => {
                literal(before, &mut pieces);
                pieces.push(Piece::Param(name.to_string()));
                rest = tail;
            }
            _ => {
                // Not a hole: the brace stays literal, scanning goes on after it.
                let brace = rest.len() - after.len();
                literal(rest.get(..brace).unwrap_or(rest), &mut pieces);
                rest = after;
            }
        }
    }
    literal(rest, &mut pieces);
    merge(pieces)
}

fn push_literal(text: &str, pieces: &mut Vec<Piece>) {
    if !text.is_empty() {
        pieces.push(Piece::Literal(text.to_string()));
    }
}

/// Appends `value` as the inside of a JSON string (no quotes).
fn json_escape_into(value: &str, out: &mut String) {
    let quoted = serde_json::Value::from(value).to_string();
    // A serialized JSON string always starts and ends with `"`.
    let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
    out.push_str(inner.unwrap_or_default());
}

fn push_json_literal(text: &str, pieces: &mut Vec<Piece>) {
    if !text.is_empty() {
        let mut escaped = String::with_capacity(text.len());
        json_escape_into(text, &mut escaped);
        pieces.push(Piece::Literal(escaped));
    }
}

fn raw_into(value: &str, out: &mut String) {
    out.push_str(value);
}

/// Compiles a JSON value into a template of its serialized text.
fn compile_message(value: &serde_json::Value, pieces: &mut Vec<Piece>) {
    use serde_json::Value;
    match value {
        Value::String(text) => {
            pieces.push(Piece::Literal("\"".into()));
            pieces.extend(split_params(text, push_json_literal));
            pieces.push(Piece::Literal("\"".into()));
        }
        Value::Array(items) => {
            pieces.push(Piece::Literal("[".into()));
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    pieces.push(Piece::Literal(",".into()));
                }
                compile_message(item, pieces);
            }
            pieces.push(Piece::Literal("]".into()));
        }
        Value::Object(fields) => {
            pieces.push(Piece::Literal("{".into()));
            for (i, (key, item)) in fields.iter().enumerate() {
                if i > 0 {
                    pieces.push(Piece::Literal(",".into()));
                }
                pieces.push(Piece::Literal(format!("{}:", Value::from(key.as_str()))));
                compile_message(item, pieces);
            }
            pieces.push(Piece::Literal("}".into()));
        }
        scalar => pieces.push(Piece::Literal(scalar.to_string())),
    }
}

/// Where a scene's push goes.
#[derive(Debug, Clone)]
enum TargetTemplate {
    All,
    Page(Template),
    Uid(Template),
}

/// One compiled row of the table.
#[derive(Debug, Clone)]
pub struct Scene {
    pub func: String,
    target: TargetTemplate,
    /// The Pusher event name (`event`), checked at start.
    event: Option<crate::push::EventName>,
    message: Template,
}

impl Scene {
    /// A short human description of the target, for the /back page and 404 lists.
    pub fn target_label(&self) -> String {
        let text = |t: &Template| {
            t.pieces
                .iter()
                .map(|p| match p {
                    Piece::Literal(l) => l.clone(),
                    Piece::Param(name) => format!("{{{name}}}"),
                })
                .collect::<String>()
        };
        match &self.target {
            TargetTemplate::All => "all".into(),
            TargetTemplate::Page(t) => format!("page {}", text(t)),
            TargetTemplate::Uid(t) => format!("uid {}", text(t)),
        }
    }

    /// The query parameters a trigger must give (target first, then message), each
    /// once: the /back page shows one input per name.
    pub fn params(&self) -> Vec<&str> {
        let target = match &self.target {
            TargetTemplate::All => None,
            TargetTemplate::Page(t) | TargetTemplate::Uid(t) => Some(t),
        };
        let mut names: Vec<&str> = Vec::new();
        for name in target
            .into_iter()
            .flat_map(Template::params)
            .chain(self.message.params())
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Builds the push for one trigger. A target filled from the query must come
    /// out a [`Name`] (the name rule), else [`SceneError::BadTarget`].
    pub fn render(&self, params: &Params) -> Result<Push, SceneError> {
        let render_id = |template: &Template| -> Result<Name, SceneError> {
            let mut id = String::new();
            template.render(params, &mut id, raw_into)?;
            Name::try_from(id.as_str()).map_err(SceneError::BadTarget)
        };
        let target = match &self.target {
            TargetTemplate::All => Target::All,
            TargetTemplate::Page(t) => Target::Page(render_id(t)?),
            TargetTemplate::Uid(t) => Target::Uid(render_id(t)?),
        };
        let mut payload = String::with_capacity(128);
        self.message
            .render(params, &mut payload, json_escape_into)?;
        Ok(Push::new(target, payload).with_event(self.event.clone()))
    }
}

/// Query parameters of a trigger; a repeated name counts with its last value
/// (PHP's `$_GET` rule, as everywhere at the edge).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut map = HashMap::new();
        for (name, value) in pairs {
            if !RESERVED_PARAMS.contains(&name.as_str()) {
                map.insert(name, value);
            }
        }
        Self(map)
    }

    pub fn from_query(query: &Query) -> Self {
        Self::from_pairs(query.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Why a trigger could not be turned into a push.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SceneError {
    #[error("missing query parameter {0:?} used by this scene")]
    MissingParam(String),
    #[error("the scene's target {0}")]
    BadTarget(NameError),
}

/// All scenes by func name.
#[derive(Debug, Clone, Default)]
pub struct SceneTable {
    scenes: Vec<Scene>,
    by_func: HashMap<String, usize>,
}

impl SceneTable {
    /// Compiles and validates the configured scenes.
    pub fn compile(configs: &[SceneConfig]) -> Result<Self, ConfigError> {
        let mut table = SceneTable::default();
        for (i, config) in configs.iter().enumerate() {
            let key = |field: &str| format!("scenes[{i}].{field}");
            let invalid = |field: &str, problem: String| ConfigError::Invalid {
                key: key(field),
                problem,
            };
            if config.func.is_empty() {
                return Err(invalid("func", "must not be empty".into()));
            }
            if table.by_func.contains_key(&config.func) {
                return Err(invalid(
                    "func",
                    format!("{:?} is listed twice", config.func),
                ));
            }
            let target = match (&config.page, &config.uid, config.all) {
                (Some(page), None, false) if !page.is_empty() => {
                    TargetTemplate::Page(target_template(page).map_err(|e| invalid("page", e))?)
                }
                (None, Some(uid), false) if !uid.is_empty() => {
                    TargetTemplate::Uid(target_template(uid).map_err(|e| invalid("uid", e))?)
                }
                (None, None, true) => TargetTemplate::All,
                _ => {
                    return Err(invalid(
                        "page",
                        "set exactly one of page, uid or all = true (page and uid non-empty)"
                            .into(),
                    ));
                }
            };
            let event = config
                .event
                .as_deref()
                .map(crate::push::EventName::try_from)
                .transpose()
                .map_err(|e| invalid("event", e.to_string()))?;
            let mut pieces = Vec::new();
            compile_message(&config.message, &mut pieces);
            let message = Template {
                pieces: merge(pieces),
            };
            let target_params: Vec<&str> = match &target {
                TargetTemplate::All => Vec::new(),
                TargetTemplate::Page(t) | TargetTemplate::Uid(t) => t.params().collect(),
            };
            if let Some(name) = message
                .params()
                .chain(target_params)
                .find(|name| RESERVED_PARAMS.contains(name))
            {
                return Err(invalid(
                    "message",
                    format!("{{{name}}} is reserved and cannot be used in a scene"),
                ));
            }
            table
                .by_func
                .insert(config.func.clone(), table.scenes.len());
            table.scenes.push(Scene {
                func: config.func.clone(),
                target,
                event,
                message,
            });
        }
        Ok(table)
    }

    pub fn get(&self, func: &str) -> Option<&Scene> {
        self.by_func.get(func).and_then(|&i| self.scenes.get(i))
    }

    /// Scenes in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Scene> {
        self.scenes.iter()
    }

    pub fn funcs(&self) -> Vec<&str> {
        self.scenes.iter().map(|s| s.func.as_str()).collect()
    }
}

/// A scene's page or uid; one without `{param}` holes must already be a [`Name`].
fn target_template(text: &str) -> Result<Template, String> {
    let pieces = split_params(text, push_literal);
    if let [Piece::Literal(fixed)] = pieces.as_slice() {
        Name::try_from(fixed.as_str()).map_err(|e| format!("{fixed:?} {e}"))?;
    }
    Ok(Template { pieces })
}

/// Joins adjacent literals so rendering appends as few pieces as possible.
fn merge(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut merged: Vec<Piece> = Vec::with_capacity(pieces.len());
    for piece in pieces {
        match (merged.last_mut(), piece) {
            (Some(Piece::Literal(prev)), Piece::Literal(next)) => prev.push_str(&next),
            (_, piece) => merged.push(piece),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn scene(
        page: Option<&str>,
        uid: Option<&str>,
        all: bool,
        message: serde_json::Value,
    ) -> SceneConfig {
        SceneConfig {
            event: None,
            func: "f".into(),
            page: page.map(Into::into),
            uid: uid.map(Into::into),
            all,
            message,
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn renders_params_escaped_into_valid_json() {
        let table = SceneTable::compile(&[scene(
            Some("home"),
            None,
            false,
            json!({"code": 200, "message": "order {id} by {who}", "seq": "{seq}", "n": [1, null, true]}),
        )])
        .unwrap();
        let push = table
            .get("f")
            .unwrap()
            .render(&params(&[
                ("id", "7"),
                ("who", "a\"b<c>\n"),
                ("seq", "12"),
                ("page", "back"),
            ]))
            .unwrap();
        assert_eq!(push.target, Target::Page(Name::try_from("home").unwrap()));
        assert_eq!(table.get("f").unwrap().params(), ["id", "who", "seq"]);
        let parsed: serde_json::Value = serde_json::from_str(&push.payload).unwrap();
        assert_eq!(
            parsed,
            json!({"code": 200, "message": "order 7 by a\"b<c>\n", "seq": "12", "n": [1, null, true]})
        );
    }

    #[test]
    fn a_fixed_target_ignores_the_query_and_a_param_target_uses_it() {
        let fixed = SceneTable::compile(&[scene(Some("home"), None, false, json!("x"))]).unwrap();
        let push = fixed
            .get("f")
            .unwrap()
            .render(&params(&[("page", "back")]))
            .unwrap();
        assert_eq!(push.target, Target::Page(Name::try_from("home").unwrap()));

        let generic =
            SceneTable::compile(&[scene(Some("{page}"), None, false, json!("x"))]).unwrap();
        let push = generic
            .get("f")
            .unwrap()
            .render(&params(&[("page", "list")]))
            .unwrap();
        assert_eq!(push.target, Target::Page(Name::try_from("list").unwrap()));
        assert_eq!(fixed.get("f").unwrap().params(), Vec::<&str>::new());
        assert_eq!(generic.get("f").unwrap().params(), ["page"]);
        assert_eq!(
            generic.get("f").unwrap().render(&params(&[])).unwrap_err(),
            SceneError::MissingParam("page".into())
        );
        assert_eq!(
            generic
                .get("f")
                .unwrap()
                .render(&params(&[("page", "")]))
                .unwrap_err(),
            SceneError::BadTarget(NameError::Empty)
        );
    }

    #[test]
    fn braces_that_are_not_params_stay_literal() {
        let table = SceneTable::compile(&[scene(
            None,
            None,
            true,
            json!({"t": "{not a param} {} {ok}"}),
        )])
        .unwrap();
        let push = table
            .get("f")
            .unwrap()
            .render(&params(&[("ok", "yes")]))
            .unwrap();
        assert_eq!(&*push.payload, r#"{"t":"{not a param} {} yes"}"#);
    }

    #[test]
    fn rejects_bad_tables() {
        let err = |configs: &[SceneConfig]| SceneTable::compile(configs).unwrap_err().to_string();
        assert!(err(&[scene(None, None, false, json!(1))]).starts_with("scenes[0].page"));
        assert!(err(&[scene(Some("a"), Some("b"), false, json!(1))]).starts_with("scenes[0].page"));
        assert!(err(&[scene(Some("a"), None, false, json!("{token}"))]).contains("reserved"));
        let twice = [
            scene(Some("a"), None, false, json!(1)),
            scene(Some("b"), None, false, json!(1)),
        ];
        assert!(err(&twice).contains("listed twice"));
    }

    #[test]
    fn a_rendered_target_must_be_a_name_and_the_last_value_wins() {
        let generic =
            SceneTable::compile(&[scene(None, Some("{uid}"), false, json!("{msg}"))]).unwrap();
        let scene = generic.get("f").unwrap();
        for bad in ["a\u{7}b", "a\u{202e}b", &"x".repeat(129)] {
            assert!(matches!(
                scene.render(&params(&[("uid", bad), ("msg", "m")])),
                Err(SceneError::BadTarget(_))
            ));
        }
        let query = Query::parse("uid=1&uid=2&msg=a&msg=b").unwrap();
        let push = scene.render(&Params::from_query(&query)).unwrap();
        assert_eq!(push.target, Target::Uid(Name::try_from("2").unwrap()));
        assert_eq!(&*push.payload, r#""b""#);
    }

    #[test]
    fn a_fixed_target_must_be_a_name() {
        let err = SceneTable::compile(&[scene(Some("a\u{1}"), None, false, json!(1))])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("scenes[0].page"), "{err}");
        let err = SceneTable::compile(&[scene(None, Some(&"u".repeat(200)), false, json!(1))])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("scenes[0].uid"), "{err}");
    }

    fn json_template() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i32>().prop_map(Value::from),
            "[{}a-c_ \\\"]{0,12}".prop_map(Value::String),
            "\\{[a-c]\\}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c{}]{0,3}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any message template and any param values: the payload is valid JSON
        /// whose strings hold the values verbatim; the target is a name or refused.
        #[test]
        fn rendering_arbitrary_params_gives_valid_json(
            message in json_template(),
            target in "[a-c{}]{1,6}",
            values in proptest::collection::vec("\\PC{0,8}|[\\x00-\\x1f\"\\\\]{0,4}", 3),
        ) {
            let Ok(table) = SceneTable::compile(&[scene(Some(&target), None, false, message.clone())]) else {
                return Ok(());
            };
            let pairs: Vec<(&str, &str)> = ["a", "b", "c"]
                .into_iter()
                .zip(values.iter().map(String::as_str))
                .collect();
            match table.get("f").unwrap().render(&params(&pairs)) {
                Ok(push) => {
                    let parsed: serde_json::Value = serde_json::from_str(&push.payload)
                        .expect("a rendered payload is JSON");
                    prop_assert_eq!(
                        std::mem::discriminant(&parsed),
                        std::mem::discriminant(&message)
                    );
                    let Target::Page(page) = push.target else {
                        return Err(TestCaseError::fail("a page scene renders a page"));
                    };
                    prop_assert!(Name::try_from(&*page).is_ok());
                }
                Err(SceneError::MissingParam(_)) | Err(SceneError::BadTarget(_)) => {}
            }
        }
    }

    #[test]
    fn reserved_params_never_fill_a_hole() {
        let p = params(&[("token", "secret"), ("func", "f")]);
        assert_eq!(p.get("token"), None);
        assert_eq!(p.get("func"), None);
    }
}
