//! `${VAR}` and `${VAR:-default}` expansion, applied to the file's text before parsing.

use super::{ConfigError, KeyPath};

/// Replaces `${VAR}` and `${VAR:-default}` with values from `lookup`; `$$` is a literal `$`.
/// An unset variable without a default is an error naming it and its line.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    let mut line = 1;
    while let Some(dollar) = rest.find('$') {
        let before = &rest[..dollar];
        line += before.matches('\n').count();
        out.push_str(before);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body.find('}') else {
            errors.push(at_line(
                line,
                "unterminated `${`: close it with `}` (write `$$` for a literal `$`)",
            ));
            out.push('$');
            rest = after;
            continue;
        };
        let reference = &body[..close];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        if !is_variable_name(name) {
            errors.push(at_line(
                line,
                format!("`${{{reference}}}` is not a valid variable reference"),
            ));
        } else {
            match (lookup(name), default) {
                (Some(value), _) if !(value.is_empty() && default.is_some()) => out.push_str(&value),
                (_, Some(default)) => out.push_str(default),
                (Some(value), None) => out.push_str(&value),
                (None, None) => errors.push(at_line(
                    line,
                    format!("environment variable {name} is not set and `${{{name}}}` has no default (write `${{{name}:-default}}`)"),
                )),
            }
        }
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn at_line(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: KeyPath::root(),
        message: message.into(),
        line: Some(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TENANT" => Some("acme".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let text = "a = \"${TENANT}\"\nb = \"${MISSING:-default}\"\nc = \"${EMPTY:-fallback}\"";
        assert_eq!(
            expand_env(text, env).unwrap(),
            "a = \"acme\"\nb = \"default\"\nc = \"fallback\""
        );
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(
            expand_env("p = \"$${TENANT} $5\"", env).unwrap(),
            "p = \"${TENANT} $5\""
        );
    }

    #[test]
    fn unset_variable_without_default_is_an_error_naming_it_and_its_line() {
        let errors = expand_env("a = 1\nb = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(2));
        assert!(
            errors[0].message.contains("NOPE is not set"),
            "{}",
            errors[0].message
        );
    }
}
