//! The CockroachDB-only statements the proxy answers itself (simple-query protocol), parsed
//! by CockroachDB's grammar (`pkg/sql/parser/sql.y` in cockroachdb-parser @7e87b69 and
//! @b03514a): `CREATE CHANGEFEED FOR changefeed_targets [INTO sink] [WITH options]`,
//! `EXPERIMENTAL CHANGEFEED FOR changefeed_targets [WITH options]`, `CREATE EXTERNAL
//! CONNECTION [IF NOT EXISTS] name AS 'uri'`, `DROP EXTERNAL CONNECTION`, `SET CLUSTER
//! SETTING name = value`, `CANCEL JOB n`.

use super::lexer::{Kind, Token, significant};

/// An error as CockroachDB reports it: SQLSTATE, message, optional hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    /// SQLSTATE. Errors CockroachDB raises without a code arrive as `XXUUU`
    /// (`pgcode.Uncategorized`, research follow-up D).
    pub code: &'static str,
    /// The message.
    pub message: String,
    /// A hint.
    pub hint: Option<String>,
}

impl SqlError {
    /// An error with a code.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// An error CockroachDB raises without a code (`XXUUU`).
    pub fn uncategorized(message: impl Into<String>) -> Self {
        Self::new("XXUUU", message)
    }

    /// With a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Something CockroachDB does that the stand-in does not model (its own refusal).
    pub fn not_modelled(what: &str) -> Self {
        Self::new(
            "0A000",
            format!("the CockroachDB stand-in does not model {what}; add it with CockroachDB's behaviour"),
        )
    }
}

/// `CREATE CHANGEFEED` / `EXPERIMENTAL CHANGEFEED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangefeedStmt {
    /// `EXPERIMENTAL CHANGEFEED FOR`.
    pub experimental: bool,
    /// Target names, each as its dotted parts.
    pub targets: Vec<Vec<String>>,
    /// The sink URI of `INTO`.
    pub into: Option<String>,
    /// `WITH` options in statement order: key (lower-cased unless quoted) and value.
    pub options: Vec<(String, Option<String>)>,
}

/// A statement the proxy answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Statement {
    /// A changefeed.
    Changefeed(ChangefeedStmt),
    /// `CREATE EXTERNAL CONNECTION`.
    CreateExternalConnection {
        /// Name.
        name: String,
        /// URI.
        uri: String,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
    },
    /// `DROP EXTERNAL CONNECTION`.
    DropExternalConnection {
        /// Name.
        name: String,
    },
    /// `SET CLUSTER SETTING name = value` (`None`: `DEFAULT`).
    SetClusterSetting {
        /// Setting name.
        name: String,
        /// Value.
        value: Option<String>,
    },
    /// `CANCEL JOB n`.
    CancelJob(i64),
    /// `GRANT USAGE ON EXTERNAL CONNECTION name TO user` (docs
    /// `create-external-connection.md`: `USAGE` lets a user create changefeeds into it).
    GrantUsage {
        /// The connection.
        name: String,
        /// The grantee.
        user: String,
    },
}

struct Cursor<'a> {
    text: &'a str,
    t: Vec<Token>,
    i: usize,
}

fn syntax_error(text: &str, t: Option<&Token>) -> SqlError {
    let near = t.map_or("EOF".to_string(), |t| text[t.start..t.end].to_string());
    SqlError::new("42601", format!("at or near \"{near}\": syntax error"))
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&Token> {
        self.t.get(self.i)
    }

    fn kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(self.text, kw)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn punct(&mut self, c: char) -> bool {
        if self.peek().is_some_and(|t| t.is(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), SqlError> {
        if self.kw(kw) {
            Ok(())
        } else {
            Err(syntax_error(self.text, self.peek()))
        }
    }

    fn name(&mut self) -> Result<String, SqlError> {
        match self.peek().and_then(|t| t.name(self.text)) {
            Some(n) => {
                self.i += 1;
                Ok(n)
            }
            None => Err(syntax_error(self.text, self.peek())),
        }
    }

    fn string(&mut self) -> Result<String, SqlError> {
        match self.peek().map(|t| t.kind.clone()) {
            Some(Kind::Str(s)) => {
                self.i += 1;
                Ok(s)
            }
            _ => Err(syntax_error(self.text, self.peek())),
        }
    }

    fn at_end(&mut self) -> bool {
        while self.punct(';') {}
        self.i >= self.t.len()
    }

    fn end(&mut self) -> Result<(), SqlError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(syntax_error(self.text, self.peek()))
        }
    }
}

/// Parses a simple query of one or more `;`-separated statements if any is one the proxy
/// answers: all of them then (a batch mixing them with statements for PostgreSQL is refused as
/// unmodelled); `None` when none is.
pub fn parse_batch(sql: &str) -> Option<Result<Vec<Statement>, SqlError>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for t in significant(sql) {
        if t.is(';') {
            pieces.push(&sql[start..t.end]);
            start = t.end;
        }
    }
    pieces.push(&sql[start..]);
    let pieces: Vec<&str> = pieces
        .into_iter()
        .filter(|p| !significant(p).iter().all(|t| t.is(';')))
        .collect();
    let parsed: Vec<Option<Result<Statement, SqlError>>> = pieces.iter().map(|p| parse(p)).collect();
    if parsed.iter().all(Option::is_none) {
        return None;
    }
    if parsed.iter().any(Option::is_none) {
        return Some(Err(SqlError::not_modelled(
            "a simple query mixing CockroachDB-only statements with other SQL",
        )));
    }
    Some(parsed.into_iter().flatten().collect())
}

/// Parses `sql` if it is one of the statements the proxy answers; `None` otherwise.
pub fn parse(sql: &str) -> Option<Result<Statement, SqlError>> {
    let t = significant(sql);
    let first = |i: usize, kw: &str| t.get(i).is_some_and(|t| t.is_kw(sql, kw));
    let ours = (first(0, "create") && first(1, "changefeed"))
        || (first(0, "experimental") && first(1, "changefeed"))
        || (first(0, "create") && first(1, "external"))
        || (first(0, "drop") && first(1, "external"))
        || (first(0, "set") && first(1, "cluster"))
        || (first(0, "cancel") && first(1, "job"))
        || (first(0, "grant") && first(1, "usage") && first(2, "on") && first(3, "external"))
        || ((first(0, "pause") || first(0, "resume")) && (first(1, "job") || first(1, "jobs")))
        || (first(0, "alter") && first(1, "changefeed"));
    if !ours {
        return None;
    }
    let mut c = Cursor { text: sql, t, i: 0 };
    Some(parse_ours(&mut c))
}

fn parse_ours(c: &mut Cursor<'_>) -> Result<Statement, SqlError> {
    if c.kw("create") {
        if c.kw("changefeed") {
            return changefeed(c, false);
        }
        c.expect_kw("external")?;
        c.expect_kw("connection")?;
        let if_not_exists = if c.kw("if") {
            c.expect_kw("not")?;
            c.expect_kw("exists")?;
            true
        } else {
            false
        };
        let name = c.name()?;
        c.expect_kw("as")?;
        let uri = c.string()?;
        c.end()?;
        return Ok(Statement::CreateExternalConnection {
            name,
            uri,
            if_not_exists,
        });
    }
    if c.kw("experimental") {
        c.expect_kw("changefeed")?;
        return changefeed(c, true);
    }
    if c.kw("drop") {
        c.expect_kw("external")?;
        c.expect_kw("connection")?;
        let name = c.name()?;
        c.end()?;
        return Ok(Statement::DropExternalConnection { name });
    }
    if c.kw("set") {
        c.expect_kw("cluster")?;
        c.expect_kw("setting")?;
        let mut name = c.name()?;
        while c.punct('.') {
            name.push('.');
            name.push_str(&c.name()?);
        }
        if !c.punct('=') {
            c.expect_kw("to")?;
        }
        let value = match c
            .peek()
            .map(|t| (t.kind.clone(), c.text[t.start..t.end].to_string()))
        {
            Some((Kind::Str(s), _)) => Some(s),
            Some((Kind::Ident, w)) if w.eq_ignore_ascii_case("default") => None,
            Some((Kind::Ident | Kind::Number, w)) => Some(w.to_ascii_lowercase()),
            _ => return Err(syntax_error(c.text, c.peek())),
        };
        c.i += 1;
        c.end()?;
        return Ok(Statement::SetClusterSetting { name, value });
    }
    if c.kw("cancel") {
        c.expect_kw("job")?;
        let id = match c.peek() {
            Some(t) if t.kind == Kind::Number => c.text[t.start..t.end].parse::<i64>().ok(),
            _ => None,
        };
        let Some(id) = id else {
            return Err(SqlError::not_modelled(
                "CANCEL JOB with anything but a literal job id",
            ));
        };
        c.i += 1;
        c.end()?;
        return Ok(Statement::CancelJob(id));
    }
    if c.kw("grant") {
        c.expect_kw("usage")?;
        c.expect_kw("on")?;
        c.expect_kw("external")?;
        c.expect_kw("connection")?;
        let name = c.name()?;
        c.expect_kw("to")?;
        let user = c.name()?;
        c.end()?;
        return Ok(Statement::GrantUsage { name, user });
    }
    if c.kw("alter") {
        return Err(SqlError::not_modelled("ALTER CHANGEFEED"));
    }
    Err(SqlError::not_modelled("PAUSE JOB / RESUME JOB"))
}

fn changefeed(c: &mut Cursor<'_>, experimental: bool) -> Result<Statement, SqlError> {
    c.expect_kw("for")?;
    if c.kw("database") {
        return Err(SqlError::not_modelled("CHANGEFEED FOR DATABASE"));
    }
    let mut targets = Vec::new();
    loop {
        c.kw("table");
        let mut parts = vec![c.name()?];
        while c.punct('.') {
            if c.punct('*') {
                return Err(SqlError::not_modelled("wildcard changefeed targets"));
            }
            parts.push(c.name()?);
        }
        if c.kw("family") {
            return Err(SqlError::not_modelled("column families"));
        }
        targets.push(parts);
        if !c.punct(',') {
            break;
        }
    }
    let into = if !experimental && c.kw("into") {
        Some(c.string()?)
    } else {
        None
    };
    let mut options = Vec::new();
    if c.kw("with") {
        let parens = c.kw("options") && {
            if !c.punct('(') {
                return Err(syntax_error(c.text, c.peek()));
            }
            true
        };
        loop {
            let key = match c.peek().map(|t| t.kind.clone()) {
                Some(Kind::Str(s)) => {
                    c.i += 1;
                    s
                }
                _ => c.name()?,
            };
            let value = if c.punct('=') {
                match c
                    .peek()
                    .map(|t| (t.kind.clone(), c.text[t.start..t.end].to_string()))
                {
                    Some((Kind::Str(s), _)) => {
                        c.i += 1;
                        Some(s)
                    }
                    Some((Kind::Number, w)) => {
                        c.i += 1;
                        Some(w)
                    }
                    _ => return Err(syntax_error(c.text, c.peek())),
                }
            } else {
                None
            };
            options.push((key, value));
            if !c.punct(',') {
                break;
            }
        }
        if parens && !c.punct(')') {
            return Err(syntax_error(c.text, c.peek()));
        }
    }
    c.end()?;
    Ok(Statement::Changefeed(ChangefeedStmt {
        experimental,
        targets,
        into,
        options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changefeeds() {
        let s = parse(
            "CREATE CHANGEFEED FOR TABLE public.dogs, TABLE \"Visits\" INTO 'external://hook' \
             WITH updated, resolved = '1s', 'envelope' = 'wrapped', initial_scan;",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s,
            Statement::Changefeed(ChangefeedStmt {
                experimental: false,
                targets: vec![vec!["public".into(), "dogs".into()], vec!["Visits".into()]],
                into: Some("external://hook".into()),
                options: vec![
                    ("updated".into(), None),
                    ("resolved".into(), Some("1s".into())),
                    ("envelope".into(), Some("wrapped".into())),
                    ("initial_scan".into(), None),
                ],
            })
        );
        let s = parse("EXPERIMENTAL CHANGEFEED FOR dogs").unwrap().unwrap();
        assert!(matches!(
            s,
            Statement::Changefeed(ChangefeedStmt {
                experimental: true,
                ..
            })
        ));
        assert_eq!(
            parse("CREATE CHANGEFEED dogs").unwrap().unwrap_err().message,
            "at or near \"dogs\": syntax error"
        );
        assert!(parse("SELECT 1").is_none());
    }

    #[test]
    fn others() {
        assert_eq!(
            parse("SET CLUSTER SETTING kv.rangefeed.enabled = true")
                .unwrap()
                .unwrap(),
            Statement::SetClusterSetting {
                name: "kv.rangefeed.enabled".into(),
                value: Some("true".into())
            }
        );
        assert_eq!(
            parse("CREATE EXTERNAL CONNECTION IF NOT EXISTS hook AS 'webhook-https://x/y'")
                .unwrap()
                .unwrap(),
            Statement::CreateExternalConnection {
                name: "hook".into(),
                uri: "webhook-https://x/y".into(),
                if_not_exists: true
            }
        );
        assert_eq!(
            parse("CANCEL JOB 42;").unwrap().unwrap(),
            Statement::CancelJob(42)
        );
    }
}
