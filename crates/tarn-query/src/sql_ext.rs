//! tarn's additions to the SQL dialect, applied to the token stream before DataFusion parses it.
//!
//! - `CREATE TABLE ... PARTITIONED BY (day(ts), bucket(16, id))` and `SORTED BY (ts DESC)`:
//!   Iceberg partition transforms and sort order, in the syntax Spark and Trino use. The
//!   clauses are taken out of the statement and returned beside it.
//! - `CREATE TABLE ... TBLPROPERTIES ('write.delete.mode' = 'copy-on-write', ...)`: Iceberg
//!   table properties, in Spark's syntax; taken out and returned beside the statement.
//! - `FROM t FOR VERSION AS OF <snapshot-id>` (time travel): rewritten to the table name
//!   `"t@<snapshot-id>"`, which may also be written directly.
//! - `MERGE ... THEN UPDATE SET *` and `... THEN INSERT *` (Spark's every-column actions):
//!   rewritten to a marker assignment `SET "tarn$all_columns" = NULL` and marker insert
//!   `INSERT ("tarn$all_columns") VALUES (NULL)`, which the row-level planner expands to the
//!   target table's columns once it knows them ([`ALL_COLUMNS`]).
//!
//! Working on tokens (sqlparser's tokenizer) rather than text means string literals, quoted
//! identifiers and comments that contain these words are left alone.

use std::collections::BTreeMap;

use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};
use tarn_core::{Error, ErrorKind, Result};
use tarn_lake::layout::{self, PartitionField, SortKey};

/// The marker column of a `MERGE`'s `UPDATE SET *` / `INSERT *` (see the module doc).
pub const ALL_COLUMNS: &str = "tarn$all_columns";

/// One statement after tarn's rewrites.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RewrittenStatement {
    /// The statement text DataFusion parses.
    pub sql: String,
    /// `PARTITIONED BY` fields of a `CREATE TABLE`.
    pub partition: Vec<PartitionField>,
    /// `SORTED BY` keys of a `CREATE TABLE`.
    pub sort: Vec<SortKey>,
    /// `TBLPROPERTIES` of a `CREATE TABLE`.
    pub properties: BTreeMap<String, String>,
}

/// Splits `sql` into statements and applies tarn's rewrites to each. Empty statements are
/// dropped.
pub fn rewrite(sql: &str) -> Result<Vec<RewrittenStatement>> {
    let dialect = PostgreSqlDialect {};
    // Tokens as written (`'it''s'` stays so): the statements are put back together from
    // them, and a token's text with its escapes undone (`'it's'`) is no longer SQL.
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("SQL syntax error: {e}")))?;
    let mut out = Vec::new();
    for statement in tokens.split(|t| *t == Token::SemiColon) {
        if statement
            .iter()
            .all(|t| matches!(t, Token::Whitespace(_) | Token::EOF))
        {
            continue;
        }
        out.push(rewrite_statement(statement)?);
    }
    Ok(out)
}

fn is_word(token: &Token, keyword: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(keyword))
}

/// Indices of non-whitespace tokens.
fn significant(tokens: &[Token]) -> Vec<usize> {
    tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, Token::Whitespace(_) | Token::EOF))
        .map(|(i, _)| i)
        .collect()
}

fn rewrite_statement(tokens: &[Token]) -> Result<RewrittenStatement> {
    let mut tokens: Vec<Token> = tokens.to_vec();
    let mut result = RewrittenStatement::default();

    let sig = significant(&tokens);
    let is_create_table = {
        let words: Vec<&Token> = sig.iter().take(4).map(|&i| &tokens[i]).collect();
        matches!(words.first(), Some(t) if is_word(t, "CREATE"))
            && words.iter().skip(1).take(3).any(|t| is_word(t, "TABLE"))
    };
    if is_create_table {
        for clause in ["PARTITIONED", "SORTED"] {
            if let Some(items) = take_clause(&mut tokens, clause)? {
                for item in items {
                    if clause == "PARTITIONED" {
                        result.partition.push(layout::parse_partition_field(&item)?);
                    } else {
                        result.sort.push(layout::parse_sort_key(&item)?);
                    }
                }
            }
        }
        result.properties = take_properties(&mut tokens)?;
    }
    rewrite_time_travel(&mut tokens)?;
    if sig.first().is_some_and(|&i| is_word(&tokens[i], "MERGE")) {
        rewrite_merge_stars(&mut tokens);
    }
    result.sql = tokens
        .iter()
        .map(token_text)
        .collect::<String>()
        .trim()
        .to_string();
    Ok(result)
}

/// `UPDATE SET *` and `INSERT *` of a `MERGE` to their markers (module doc).
fn rewrite_merge_stars(tokens: &mut Vec<Token>) {
    let marker = || Token::make_word(ALL_COLUMNS, Some('"'));
    let space = || Token::Whitespace(datafusion::sql::sqlparser::tokenizer::Whitespace::Space);
    let null = || Token::make_keyword("NULL");
    let mut i = tokens.len();
    while i > 0 {
        i -= 1;
        if tokens[i] != Token::Mul {
            continue;
        }
        let before: Vec<usize> = significant(&tokens[..i]).into_iter().rev().take(2).collect();
        let word = |k: usize| before.get(k).map(|&j| &tokens[j]);
        let replacement =
            if word(0).is_some_and(|t| is_word(t, "SET")) && word(1).is_some_and(|t| is_word(t, "UPDATE")) {
                vec![marker(), space(), Token::Eq, space(), null()]
            } else if word(0).is_some_and(|t| is_word(t, "INSERT")) {
                vec![
                    Token::LParen,
                    marker(),
                    Token::RParen,
                    space(),
                    Token::make_keyword("VALUES"),
                    space(),
                    Token::LParen,
                    null(),
                    Token::RParen,
                ]
            } else {
                continue;
            };
        tokens.splice(i..=i, replacement);
    }
}

/// `token` as SQL text. The tokenizer keeps string literals as written (`with_unescape(false)`)
/// except `E'...'` and `U&'...'`, whose escapes it always decodes: those are written again
/// with their escapes.
fn token_text(token: &Token) -> String {
    match token {
        Token::EscapedStringLiteral(s) => {
            let mut out = String::from("E'");
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Token::UnicodeStringLiteral(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}

/// Removes `<keyword> BY ( ... )` at parenthesis depth 0 and returns its comma-separated
/// items as text.
fn take_clause(tokens: &mut Vec<Token>, keyword: &str) -> Result<Option<Vec<String>>> {
    let sig = significant(tokens);
    let mut depth = 0i32;
    for (n, &i) in sig.iter().enumerate() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 0 && is_word(t, keyword) => {
                let by = sig.get(n + 1).map(|&j| &tokens[j]);
                let open = sig.get(n + 2).map(|&j| &tokens[j]);
                if !by.is_some_and(|t| is_word(t, "BY")) || open != Some(&Token::LParen) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("expected {keyword} BY (...) in CREATE TABLE"),
                    ));
                }
                let start = i;
                let open_idx = sig[n + 2];
                let mut level = 0i32;
                let mut items = vec![String::new()];
                let mut end = None;
                for (j, token) in tokens.iter().enumerate().skip(open_idx) {
                    match token {
                        Token::LParen => {
                            level += 1;
                            if level == 1 {
                                continue;
                            }
                        }
                        Token::RParen => {
                            level -= 1;
                            if level == 0 {
                                end = Some(j);
                                break;
                            }
                        }
                        Token::Comma if level == 1 => {
                            items.push(String::new());
                            continue;
                        }
                        _ => {}
                    }
                    items
                        .last_mut()
                        .expect("one item at least")
                        .push_str(&token.to_string());
                }
                let Some(end) = end else {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("unclosed parenthesis after {keyword} BY"),
                    ));
                };
                tokens.drain(start..=end);
                let items: Vec<String> = items.into_iter().map(|s| s.trim().to_string()).collect();
                if items.iter().any(String::is_empty) {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        format!("empty item in {keyword} BY (...)"),
                    ));
                }
                return Ok(Some(items));
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Removes `TBLPROPERTIES ('k' = 'v', ...)` at parenthesis depth 0 and returns the pairs.
fn take_properties(tokens: &mut Vec<Token>) -> Result<BTreeMap<String, String>> {
    let sig = significant(tokens);
    let mut depth = 0i32;
    let mut start = None;
    for (n, &i) in sig.iter().enumerate() {
        match &tokens[i] {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 0 && is_word(t, "TBLPROPERTIES") => {
                start = Some(n);
                break;
            }
            _ => {}
        }
    }
    let Some(n) = start else {
        return Ok(BTreeMap::new());
    };
    let syntax = || {
        Error::new(
            ErrorKind::InvalidInput,
            "syntax error: expected TBLPROPERTIES ('key' = 'value', ...) in CREATE TABLE",
        )
    };
    let mut properties = BTreeMap::new();
    let at = |k: usize| sig.get(k).map(|&j| &tokens[j]);
    if at(n + 1) != Some(&Token::LParen) {
        return Err(syntax());
    }
    let mut k = n + 2;
    loop {
        match (at(k), at(k + 1), at(k + 2)) {
            (
                Some(Token::SingleQuotedString(key)),
                Some(Token::Eq),
                Some(Token::SingleQuotedString(value)),
            ) => {
                properties.insert(key.replace("''", "'"), value.replace("''", "'"));
            }
            _ => return Err(syntax()),
        }
        match at(k + 3) {
            Some(Token::Comma) => k += 4,
            Some(Token::RParen) => break,
            _ => return Err(syntax()),
        }
    }
    let (first, last) = (sig[n], sig[k + 3]);
    tokens.drain(first..=last);
    Ok(properties)
}

/// `name FOR VERSION AS OF 123` → `"name@123"`.
fn rewrite_time_travel(tokens: &mut Vec<Token>) -> Result<()> {
    loop {
        let sig = significant(tokens);
        let Some(n) = (1..sig.len()).find(|&n| {
            is_word(&tokens[sig[n]], "FOR") && sig.get(n + 1).is_some_and(|&j| is_word(&tokens[j], "VERSION"))
        }) else {
            return Ok(());
        };
        let syntax = || {
            Error::new(
                ErrorKind::InvalidInput,
                "expected FOR VERSION AS OF <snapshot-id> after a table name",
            )
        };
        let as_ = sig.get(n + 2).map(|&j| &tokens[j]);
        let of = sig.get(n + 3).map(|&j| &tokens[j]);
        if !as_.is_some_and(|t| is_word(t, "AS")) || !of.is_some_and(|t| is_word(t, "OF")) {
            return Err(syntax());
        }
        let snapshot = match sig.get(n + 4).map(|&j| &tokens[j]) {
            Some(Token::Number(n, _)) => n.clone(),
            Some(Token::SingleQuotedString(s)) if s.parse::<i64>().is_ok() => s.clone(),
            _ => return Err(syntax()),
        };
        let name_idx = sig[n - 1];
        let Token::Word(name) = &tokens[name_idx] else {
            return Err(syntax());
        };
        let renamed = Token::Word(Word {
            value: format!(
                "{}@{snapshot}",
                if name.quote_style.is_some() {
                    name.value.clone()
                } else {
                    name.value.to_ascii_lowercase()
                }
            ),
            quote_style: Some('"'),
            keyword: Keyword::NoKeyword,
        });
        tokens[name_idx] = renamed;
        tokens.drain(name_idx + 1..=sig[n + 4]);
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::Transform;

    use super::*;

    #[test]
    fn partitioned_by_is_extracted() {
        let out = rewrite(
            "CREATE TABLE s.t (id INT, ts TIMESTAMP, name VARCHAR) \
             PARTITIONED BY (day(ts), bucket(16, id)) SORTED BY (name DESC); SELECT 1",
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].sql,
            "CREATE TABLE s.t (id INT, ts TIMESTAMP, name VARCHAR)"
        );
        assert_eq!(out[0].partition.len(), 2);
        assert_eq!(out[0].partition[1].transform, Transform::Bucket(16));
        assert!(out[0].sort[0].descending);
        assert_eq!(out[1].sql, "SELECT 1");
    }

    #[test]
    fn table_properties_are_extracted() {
        let out = rewrite(
            "CREATE TABLE t (a INT) TBLPROPERTIES ('write.delete.mode' = 'copy-on-write', 'x' = 'y')",
        )
        .unwrap();
        assert_eq!(out[0].sql, "CREATE TABLE t (a INT)");
        assert_eq!(out[0].properties["write.delete.mode"], "copy-on-write");
        assert_eq!(out[0].properties["x"], "y");
        assert!(rewrite("CREATE TABLE t (a INT) TBLPROPERTIES ('k')").is_err());
    }

    #[test]
    fn merge_stars_become_markers_and_other_stars_stay() {
        let out = rewrite(
            "MERGE INTO t USING (SELECT *, count(*) OVER () AS n FROM s) x ON t.id = x.id \
             WHEN MATCHED AND x.n * 2 > 1 THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        )
        .unwrap();
        assert_eq!(
            out[0].sql,
            "MERGE INTO t USING (SELECT *, count(*) OVER () AS n FROM s) x ON t.id = x.id \
             WHEN MATCHED AND x.n * 2 > 1 THEN UPDATE SET \"tarn$all_columns\" = NULL \
             WHEN NOT MATCHED THEN INSERT (\"tarn$all_columns\") VALUES (NULL)"
        );
        // Not a MERGE: untouched.
        assert_eq!(rewrite("SELECT * FROM t").unwrap()[0].sql, "SELECT * FROM t");
    }

    #[test]
    fn strings_are_untouched() {
        let out = rewrite("SELECT 'PARTITIONED BY (x)' FROM t").unwrap();
        assert_eq!(out[0].sql, "SELECT 'PARTITIONED BY (x)' FROM t");
        assert!(out[0].partition.is_empty());
        // Escapes stay as written: the statement is still SQL, with the same strings.
        for sql in [
            "SELECT 'it''s', E'a\\'b', \"we\"\"ird\" FROM t WHERE v = 'O''Brien'",
            "UPDATE t SET v = 'it''s' WHERE id = 1",
            "SELECT $$it's$$, N'x''y'",
        ] {
            assert_eq!(rewrite(sql).unwrap()[0].sql, sql);
        }
        // Decoded by the tokenizer, written again with the same value.
        let out = rewrite("SELECT E'a\\nb\\\\c', U&'d\\0061t''a'").unwrap();
        assert_eq!(out[0].sql, "SELECT E'a\\nb\\\\c', 'dat''a'");
        let out = rewrite("CREATE TABLE t (a INT) TBLPROPERTIES ('comment' = 'it''s')").unwrap();
        assert_eq!(out[0].properties["comment"], "it's");
    }

    #[test]
    fn time_travel_is_rewritten() {
        let out = rewrite("SELECT * FROM s.Orders FOR VERSION AS OF 42 WHERE x = 1").unwrap();
        assert_eq!(out[0].sql, "SELECT * FROM s.\"orders@42\" WHERE x = 1");
        assert!(rewrite("SELECT * FROM t FOR VERSION AS OF latest").is_err());
    }

    #[test]
    fn bad_clause_is_reported() {
        assert!(rewrite("CREATE TABLE t (a INT) PARTITIONED BY (weekly(a))").is_err());
        assert!(rewrite("CREATE TABLE t (a INT) PARTITIONED BY (a").is_err());
    }
}
