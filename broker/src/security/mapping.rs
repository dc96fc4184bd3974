//! Kafka's `ssl.principal.mapping.rules` (KIP-371): how a client certificate's distinguished
//! name (RFC 2253, e.g. `CN=writer,OU=apps,O=Example`) becomes a principal name. Rules are
//! tried in order: `RULE:pattern/replacement/` with an optional `L` or `U` after the last
//! slash (lower- or upper-case the result) applies when the pattern matches the whole name
//! and gives the replacement (`$1`… for its groups); `DEFAULT` gives the name unchanged. When
//! no rule applies, the client is refused, as in Kafka. The default rule list is `DEFAULT`.

use regex::Regex;

/// One rule.
#[derive(Clone, Debug)]
pub(crate) enum Rule {
    Default,
    Map {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Case {
    Keep,
    Lower,
    Upper,
}

/// Splits `s` at its first `/` not escaped as `\/`, unescaping those before it.
fn until_slash(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if s[i + 1..].starts_with('/') => {
                out.push('/');
                chars.next();
            }
            '/' => return Some((out, &s[i + 1..])),
            c => out.push(c),
        }
    }
    None
}

/// Parses the rules; an error names the rule it cannot read.
pub(crate) fn parse(rules: &[String]) -> Result<Vec<Rule>, String> {
    rules
        .iter()
        .map(|r| {
            let rule = r.trim();
            if rule == "DEFAULT" {
                return Ok(Rule::Default);
            }
            let bad =
                |why: &str| format!("{rule:?}: {why} (RULE:pattern/replacement/[LU] or DEFAULT)");
            let body = rule
                .strip_prefix("RULE:")
                .ok_or_else(|| bad("not a rule"))?;
            let (pattern, rest) = until_slash(body).ok_or_else(|| bad("no replacement"))?;
            let (replacement, flags) = until_slash(rest).ok_or_else(|| bad("no closing /"))?;
            let case = match flags {
                "" => Case::Keep,
                "L" => Case::Lower,
                "U" => Case::Upper,
                _ => return Err(bad("only L or U may follow the last /")),
            };
            let pattern = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| bad(&format!("the pattern does not compile: {e}")))?;
            Ok(Rule::Map {
                pattern,
                replacement,
                case,
            })
        })
        .collect()
}

/// The principal name `rules` give distinguished name `dn`; `None` when no rule applies.
pub(crate) fn map(rules: &[Rule], dn: &str) -> Option<String> {
    rules.iter().find_map(|rule| match rule {
        Rule::Default => Some(dn.to_owned()),
        Rule::Map {
            pattern,
            replacement,
            case,
        } => {
            let caps = pattern.captures(dn)?;
            let mut out = String::new();
            caps.expand(replacement, &mut out);
            Some(match case {
                Case::Keep => out,
                Case::Lower => out.to_lowercase(),
                Case::Upper => out.to_uppercase(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> Vec<Rule> {
        parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("rules")
    }

    /// Kafka's own examples (KIP-371 and the broker docs).
    #[test]
    fn rules_map_names_as_kafka_does() {
        let r = rules(&[
            r"RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
            r"RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
            r"RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
            "DEFAULT",
        ]);
        assert_eq!(
            map(
                &r,
                "CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"
            )
            .as_deref(),
            Some("serviceuser")
        );
        assert_eq!(
            map(
                &r,
                "CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"
            )
            .as_deref(),
            Some("adminuser@admin")
        );
        assert_eq!(map(&r, "cn=Writer,O=Example").as_deref(), Some("writer"));
        assert_eq!(map(&r, "O=NoCommonName").as_deref(), Some("O=NoCommonName"));
        // Without DEFAULT, a name no rule matches is refused.
        let strict = rules(&[r"RULE:^CN=([^,]*),O=Example$/$1/U"]);
        assert_eq!(map(&strict, "CN=w,O=Example").as_deref(), Some("W"));
        assert_eq!(map(&strict, "CN=w,O=Elsewhere"), None);
        // An escaped slash belongs to the pattern or the replacement.
        let slashes = rules(&[r"RULE:^CN=(.*)$/apps\/$1/"]);
        assert_eq!(map(&slashes, "CN=x").as_deref(), Some("apps/x"));
    }

    #[test]
    fn malformed_rules_are_named() {
        for bad in [
            "RULE:^CN=(.*)$/$1",
            "RULE:^CN=(.*)$/$1/X",
            "RULE:^CN=((.*)$/$1/",
            "MAP:^CN=(.*)$/$1/",
            "",
        ] {
            let e = parse(&[bad.to_owned()]).expect_err(bad);
            assert!(e.contains(bad.trim()), "{bad}: {e}");
        }
    }
}
