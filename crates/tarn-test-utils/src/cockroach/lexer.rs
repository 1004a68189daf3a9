//! A SQL tokenizer, enough to find names in a statement without touching strings, quoted
//! identifiers or comments (PostgreSQL's and CockroachDB's lexical rules agree on these).

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Spaces and comments.
    Space,
    /// An unquoted identifier or keyword (as written).
    Ident,
    /// A `"quoted"` identifier; the value is unescaped.
    Quoted(String),
    /// A string literal; the value is unescaped.
    Str(String),
    /// A number.
    Number,
    /// `$1`.
    Param,
    /// Any other character (`.`, `(`, `,`, `;`, operators).
    Punct(char),
}

/// A token and where it is in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// What it is.
    pub kind: Kind,
    /// Byte offset of its start.
    pub start: usize,
    /// Byte offset after its end.
    pub end: usize,
}

impl Token {
    /// The name this token spells, if it is an identifier: lower-cased when unquoted.
    pub fn name(&self, text: &str) -> Option<String> {
        match &self.kind {
            Kind::Ident => Some(text[self.start..self.end].to_ascii_lowercase()),
            Kind::Quoted(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// Whether this is the keyword `kw` (case-insensitive, unquoted).
    pub fn is_kw(&self, text: &str, kw: &str) -> bool {
        self.kind == Kind::Ident && text[self.start..self.end].eq_ignore_ascii_case(kw)
    }

    /// Whether this is the character `c`.
    pub fn is(&self, c: char) -> bool {
        self.kind == Kind::Punct(c)
    }
}

/// Splits `text` into tokens (spaces and comments included, so the text can be rebuilt).
pub fn tokens(text: &str) -> Vec<Token> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let c = b[i];
        let kind = if c.is_ascii_whitespace() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            Kind::Space
        } else if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            Kind::Space
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            Kind::Space
        } else if c == b'\'' || ((c == b'e' || c == b'E') && b.get(i + 1) == Some(&b'\'')) {
            let escapes = c != b'\'';
            if escapes {
                i += 1;
            }
            i += 1;
            let mut value = Vec::new();
            while i < b.len() {
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        value.push(b'\'');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                if escapes && b[i] == b'\\' && i + 1 < b.len() {
                    value.push(match b[i + 1] {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                value.push(b[i]);
                i += 1;
            }
            Kind::Str(String::from_utf8_lossy(&value).into_owned())
        } else if c == b'"' {
            i += 1;
            let mut value = Vec::new();
            while i < b.len() {
                if b[i] == b'"' {
                    if b.get(i + 1) == Some(&b'"') {
                        value.push(b'"');
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                value.push(b[i]);
                i += 1;
            }
            Kind::Quoted(String::from_utf8_lossy(&value).into_owned())
        } else if c == b'$' {
            // $1, or a dollar-quoted string $tag$…$tag$.
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if b[i + 1..j].iter().all(u8::is_ascii_digit) && j > i + 1 {
                i = j;
                Kind::Param
            } else if b.get(j) == Some(&b'$') {
                let tag = &text[i..=j];
                let body_start = j + 1;
                match text[body_start..].find(tag) {
                    Some(k) => {
                        i = body_start + k + tag.len();
                        Kind::Str(text[body_start..body_start + k].to_string())
                    }
                    None => {
                        i = b.len();
                        Kind::Str(text[body_start..].to_string())
                    }
                }
            } else {
                i += 1;
                Kind::Punct('$')
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$' || b[i] >= 0x80)
            {
                i += 1;
            }
            Kind::Ident
        } else if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
            Kind::Number
        } else {
            let ch = text[i..].chars().next().expect("a character");
            i += ch.len_utf8();
            Kind::Punct(ch)
        };
        out.push(Token { kind, start, end: i });
    }
    out
}

/// The tokens that are not spaces or comments.
pub fn significant(text: &str) -> Vec<Token> {
    tokens(text)
        .into_iter()
        .filter(|t| t.kind != Kind::Space)
        .collect()
}

/// Quotes `s` as a SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Quotes `s` as an identifier when it needs it.
pub fn quote_ident(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let text = r#"SELECT "A""b", 'it''s', E'x\ny', $$pg_class$$, $1, 1.5 -- pg_foo
          FROM /* pg_bar */ pg_catalog.pg_class"#;
        let t = significant(text);
        assert_eq!(t[1].kind, Kind::Quoted("A\"b".into()));
        assert_eq!(t[3].kind, Kind::Str("it's".into()));
        assert_eq!(t[5].kind, Kind::Str("x\ny".into()));
        assert_eq!(t[7].kind, Kind::Str("pg_class".into()));
        assert_eq!(t[9].kind, Kind::Param);
        assert_eq!(t[11].kind, Kind::Number);
        assert_eq!(t[12].name(text).as_deref(), Some("from"));
        assert_eq!(t[13].name(text).as_deref(), Some("pg_catalog"));
        assert!(t[14].is('.'));
        assert_eq!(t.len(), 16);
        let all: String = tokens(text).iter().map(|t| &text[t.start..t.end]).collect();
        assert_eq!(all, text);
    }
}
