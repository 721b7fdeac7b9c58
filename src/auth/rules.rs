//! Grants derived from the claims a token already carries, so tokens an identity provider
//! issues work unchanged.
//!
//! ```toml
//! [auth.grants]
//! subscribe = ["logs:{claims.workspace_id}:*", "teams:{claims.groups}:**", "notifications:{sub}"]
//! publish = []
//! ```
//!
//! `{claims.NAME}` (a dotted path, e.g. `{claims.org.id}`) is replaced by the claim's value: a
//! string or a number, or each element of an array of them (one pattern per element). A
//! value must be a valid channel segment — no `:`, `*`, `{`, `}`, spaces — or the template
//! grants nothing for it: a claim can never widen a grant. A template whose claim is missing
//! grants nothing. `{sub}` stays as is and means the user, as in any grant.

use serde_json::{Map, Value};

use crate::channel::{validate_pattern, ChannelError};

/// Why a grant template cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{claims.` without a closing `}}`")]
    Unclosed,
    #[error("empty claim name in {0:?}")]
    EmptyClaim(String),
    /// With each claim replaced by a plain segment, it is not a valid grant pattern.
    #[error(transparent)]
    Pattern(#[from] ChannelError),
}

/// Most patterns one template may expand to (arrays multiply).
const MAX_EXPANSION: usize = 1_000;

/// Checks a template: with each `{claims.…}` standing for a plain segment value, it must be
/// a valid grant pattern.
pub fn validate_template(template: &str) -> Result<(), TemplateError> {
    let mut sample = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{claims.") {
        let len = rest[start..].find('}').ok_or(TemplateError::Unclosed)?;
        let path = &rest[start + "{claims.".len()..start + len];
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(TemplateError::EmptyClaim(
                rest[start..=start + len].to_owned(),
            ));
        }
        sample.push_str(&rest[..start]);
        sample.push('x');
        rest = &rest[start + len + 1..];
    }
    sample.push_str(rest);
    Ok(validate_pattern(&sample)?)
}

/// Expands `templates` against `claims`.
pub fn expand(templates: &[String], claims: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for t in templates {
        let mut partial = vec![String::new()];
        let mut rest = t.as_str();
        let mut ok = true;
        while let Some(start) = rest.find("{claims.") {
            let Some(len) = rest[start..].find('}') else {
                ok = false;
                break;
            };
            let path = &rest[start + "{claims.".len()..start + len];
            let values = claim_values(claims, path);
            if values.is_empty() || partial.len() * values.len() > MAX_EXPANSION {
                ok = false;
                break;
            }
            let literal = &rest[..start];
            partial = partial
                .iter()
                .flat_map(|p| values.iter().map(move |v| format!("{p}{literal}{v}")))
                .collect();
            rest = &rest[start + len + 1..];
        }
        if !ok {
            continue;
        }
        out.extend(
            partial
                .into_iter()
                .map(|p| p + rest)
                .filter(|p| validate_pattern(p).is_ok()),
        );
    }
    out
}

/// The usable values of the claim at `path`.
fn claim_values(claims: &Map<String, Value>, path: &str) -> Vec<String> {
    let mut value = None;
    let mut map = Some(claims);
    for part in path.split('.') {
        value = map.and_then(|m| m.get(part));
        map = value.and_then(Value::as_object);
    }
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let values: Vec<String> = match value {
        Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    };
    values
        .into_iter()
        .filter(|v| crate::channel::validate_channel(v).is_ok() && !v.contains(':'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn templates_are_checked() {
        assert!(validate_template("logs:{claims.ws}:*").is_ok());
        assert!(validate_template("logs:{claims.a.b}-x:{sub}").is_ok());
        assert!(validate_template("logs:{claims.ws").is_err());
        assert!(validate_template("logs:{claims.}").is_err());
        assert!(validate_template("logs::{claims.ws}").is_err());
        assert!(validate_template("logs:{claim.ws}").is_err());
    }

    #[test]
    fn expands_strings_numbers_arrays_and_paths() {
        let c = claims(json!({
            "workspace_id": "w1", "n": 7, "groups": ["a", "b"], "org": {"id": "o9"},
            "evil": "x:*", "star": "*", "empty": ""
        }));
        let t = |s: &str| expand(&[s.to_owned()], &c);
        assert_eq!(t("logs:{claims.workspace_id}:*"), vec!["logs:w1:*"]);
        assert_eq!(t("n:{claims.n}"), vec!["n:7"]);
        assert_eq!(t("g:{claims.groups}:**"), vec!["g:a:**", "g:b:**"]);
        assert_eq!(t("o:{claims.org.id}"), vec!["o:o9"]);
        assert_eq!(t("notifications:{sub}"), vec!["notifications:{sub}"]);
        assert!(t("x:{claims.missing}").is_empty());
        assert!(
            t("x:{claims.evil}").is_empty(),
            "a claim never widens a grant"
        );
        assert!(t("x:{claims.star}").is_empty());
        assert!(t("x:{claims.empty}").is_empty());
        assert!(t("x:{claims.org}").is_empty(), "objects are not values");
        assert_eq!(
            t("{claims.groups}:{claims.groups}"),
            vec!["a:a", "a:b", "b:a", "b:b"]
        );
    }
}
