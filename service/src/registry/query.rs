//! The device query language of dynamic groups, parsed strictly and evaluated in SQL.
//!
//! ```text
//! query      := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" or ")" | comparison
//! comparison := field op literal
//! field      := "id" | "serial" | "hardware" | "firmware" | "attributes." key
//! op         := "=" | "!=" | "<" | "<=" | ">" | ">="
//! literal    := "string" | number | true | false
//! ```
//!
//! Example: `hardware = "rpi4" and attributes.site = "sg-1" and firmware < "2.0.0"`.
//!
//! `firmware` compares as a semantic version (the literal must be one); `id`, `serial` and
//! `hardware` compare as text. An attribute compares with a literal of its own JSON type
//! only: `attributes.rack > 3` matches numbers above 3, never the string "4"; booleans allow
//! `=` and `!=`. A device without the field (no firmware reported, no such attribute) matches
//! no comparison on it, `!=` and `not` included. Errors name the column and the token at fault.

use std::fmt;

use sea_orm::DatabaseBackend;
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use semver::Version;

use super::entities::devices;
use super::version_key;

/// Longest query accepted.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Deepest nesting of `not` and parentheses.
const MAX_DEPTH: usize = 32;

/// A parsed query.
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    /// Both hold.
    And(Box<Query>, Box<Query>),
    /// Either holds.
    Or(Box<Query>, Box<Query>),
    /// It does not hold.
    Not(Box<Query>),
    /// A field compared with a literal.
    Compare(Field, Op, Literal),
}

/// What a comparison reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    /// The device id.
    Id,
    /// The serial number.
    Serial,
    /// The hardware id.
    Hardware,
    /// The reported firmware version.
    Firmware,
    /// One attribute.
    Attribute(String),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    /// `"text"`
    Str(String),
    /// `12`, `-3.5`
    Num(f64),
    /// `true`, `false`
    Bool(bool),
}

/// Why a query does not parse, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at column {column}: {message}")]
pub struct ParseError {
    /// 1-based character column of the token at fault.
    pub column: usize,
    /// What was expected and what was found.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(Op),
    LParen,
    RParen,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Num(n) => write!(f, "{n}"),
            Tok::Op(op) => write!(f, "`{}`", op_text(*op)),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::End => f.write_str("the end of the query"),
        }
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Eq => "=",
        Op::Ne => "!=",
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
    }
}

fn lex(input: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, message: String| ParseError {
        column: at + 1,
        message,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '=' => {
                i += 1;
                if chars.get(i) == Some(&'=') {
                    return Err(err(start, "`==` is not an operator: use `=`".to_owned()));
                }
                Tok::Op(Op::Eq)
            }
            '!' | '<' | '>' => {
                i += 1;
                let eq = chars.get(i) == Some(&'=');
                if eq {
                    i += 1;
                }
                match (c, eq) {
                    ('!', true) => Tok::Op(Op::Ne),
                    ('!', false) => {
                        return Err(err(start, "`!` must be followed by `=`".to_owned()));
                    }
                    ('<', false) => Tok::Op(Op::Lt),
                    ('<', true) => Tok::Op(Op::Le),
                    ('>', false) => Tok::Op(Op::Gt),
                    _ => Tok::Op(Op::Ge),
                }
            }
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "this string is never closed".to_owned())),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(e @ ('"' | '\\')) => s.push(*e),
                                _ => {
                                    return Err(err(
                                        i,
                                        "only \\\" and \\\\ are escapes".to_owned(),
                                    ));
                                }
                            }
                            i += 2;
                        }
                        Some(&ch) if ch.is_control() => {
                            return Err(err(
                                i,
                                "control characters are not allowed in strings".to_owned(),
                            ));
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                Tok::Str(s)
            }
            c if c.is_ascii_digit() || c == '-' => {
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || matches!(chars[i], '-' | '.'))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n: f64 = text
                    .parse()
                    .map_err(|_| err(start, format!("`{text}` is not a number")))?;
                if !n.is_finite() {
                    return Err(err(start, format!("`{text}` is not a finite number")));
                }
                Tok::Num(n)
            }
            c if c.is_ascii_alphabetic() => {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    i += 1;
                }
                Tok::Ident(chars[start..i].iter().collect())
            }
            other => return Err(err(start, format!("unexpected character `{other}`"))),
        };
        out.push((start, tok));
    }
    out.push((chars.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].1
    }

    fn error(&self, expected: &str) -> ParseError {
        let (pos, tok) = &self.toks[self.at];
        ParseError {
            column: pos + 1,
            message: format!("expected {expected}, found {tok}"),
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w == word)
    }

    fn or(&mut self) -> Result<Query, ParseError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            let right = self.and()?;
            left = Query::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Query, ParseError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            let right = self.unary()?;
            left = Query::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Query, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!("at most {MAX_DEPTH} levels of nesting")));
        }
        let q = if self.keyword("not") {
            self.at += 1;
            Query::Not(Box::new(self.unary()?))
        } else if *self.peek() == Tok::LParen {
            self.at += 1;
            let inner = self.or()?;
            if *self.peek() != Tok::RParen {
                return Err(self.error("`)`"));
            }
            self.at += 1;
            inner
        } else {
            self.comparison()?
        };
        self.depth -= 1;
        Ok(q)
    }

    fn comparison(&mut self) -> Result<Query, ParseError> {
        const FIELDS: &str = "a field (id, serial, hardware, firmware or attributes.<key>)";
        let field = match self.peek().clone() {
            Tok::Ident(name) => match name.as_str() {
                "id" => Field::Id,
                "serial" => Field::Serial,
                "hardware" => Field::Hardware,
                "firmware" => Field::Firmware,
                _ => match name.strip_prefix("attributes.") {
                    Some(key)
                        if !key.is_empty()
                            && key.len() <= 64
                            && key
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                    {
                        Field::Attribute(key.to_owned())
                    }
                    _ => return Err(self.error(FIELDS)),
                },
            },
            _ => return Err(self.error(FIELDS)),
        };
        self.at += 1;
        let Tok::Op(op) = *self.peek() else {
            return Err(self.error("an operator (= != < <= > >=)"));
        };
        self.at += 1;
        let literal_at = self.at;
        let literal = match self.peek().clone() {
            Tok::Str(s) => Literal::Str(s),
            Tok::Num(n) => Literal::Num(n),
            Tok::Ident(w) if w == "true" => Literal::Bool(true),
            Tok::Ident(w) if w == "false" => Literal::Bool(false),
            _ => return Err(self.error("a value (a \"string\", a number, true or false)")),
        };
        self.at += 1;
        let type_error = |message: String| ParseError {
            column: self.toks[literal_at].0 + 1,
            message,
        };
        match (&field, &literal) {
            (Field::Firmware, Literal::Str(v)) => {
                Version::parse(v).map_err(|e| {
                    type_error(format!(
                        "firmware compares with a semantic version: {v:?}: {e}"
                    ))
                })?;
            }
            (Field::Firmware, _) => {
                return Err(type_error(
                    "firmware compares with a version string, e.g. \"2.0.0\"".to_owned(),
                ));
            }
            (Field::Id | Field::Serial | Field::Hardware, Literal::Str(_)) => {}
            (Field::Id | Field::Serial | Field::Hardware, _) => {
                return Err(type_error(
                    "this field compares with a \"string\"".to_owned(),
                ));
            }
            (Field::Attribute(_), Literal::Bool(_)) if !matches!(op, Op::Eq | Op::Ne) => {
                return Err(type_error("booleans compare with = and != only".to_owned()));
            }
            (Field::Attribute(_), _) => {}
        }
        Ok(Query::Compare(field, op, literal))
    }
}

impl Query {
    /// Parses `input`, or says exactly where and why it does not parse.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        if input.len() > MAX_QUERY_BYTES {
            return Err(ParseError {
                column: 1,
                message: format!("a query is at most {MAX_QUERY_BYTES} bytes"),
            });
        }
        let mut parser = Parser {
            toks: lex(input)?,
            at: 0,
            depth: 0,
        };
        let query = parser.or()?;
        if *parser.peek() != Tok::End {
            return Err(parser.error("`and`, `or` or the end of the query"));
        }
        Ok(query)
    }

    /// The SQL condition over the `devices` table that selects exactly the matching devices.
    pub fn to_sql(&self, backend: DatabaseBackend) -> SimpleExpr {
        match self {
            Query::And(a, b) => a.to_sql(backend).and(b.to_sql(backend)),
            Query::Or(a, b) => a.to_sql(backend).or(b.to_sql(backend)),
            // SQL's three-valued logic: a comparison on a missing field is NULL, and stays
            // unmatched under `not` too.
            Query::Not(q) => q.to_sql(backend).not(),
            Query::Compare(field, op, literal) => compare(backend, field, *op, literal),
        }
    }
}

fn compare(backend: DatabaseBackend, field: &Field, op: Op, literal: &Literal) -> SimpleExpr {
    let (lhs, rhs): (SimpleExpr, SimpleExpr) = match (field, literal) {
        (Field::Id, Literal::Str(s)) => (Expr::col(devices::Column::Id), Expr::val(s.clone())),
        (Field::Serial, Literal::Str(s)) => {
            (Expr::col(devices::Column::Serial), Expr::val(s.clone()))
        }
        (Field::Hardware, Literal::Str(s)) => {
            (Expr::col(devices::Column::Hardware), Expr::val(s.clone()))
        }
        (Field::Firmware, Literal::Str(v)) => {
            let key = Version::parse(v)
                .map(|v| version_key::of(&v))
                .unwrap_or_default();
            (Expr::col(devices::Column::FirmwareKey), Expr::val(key))
        }
        (Field::Attribute(key), literal) => attribute(backend, key, literal),
        // Parsing admits no other pairs.
        _ => (Expr::val(1), Expr::val(0)),
    };
    let lhs = Expr::expr(lhs);
    match op {
        Op::Eq => lhs.eq(rhs),
        Op::Ne => lhs.ne(rhs),
        Op::Lt => lhs.lt(rhs),
        Op::Le => lhs.lte(rhs),
        Op::Gt => lhs.gt(rhs),
        Op::Ge => lhs.gte(rhs),
    }
}

/// The attribute's value when its JSON type matches the literal's, else NULL.
fn attribute(backend: DatabaseBackend, key: &str, literal: &Literal) -> (SimpleExpr, SimpleExpr) {
    let postgres = backend == DatabaseBackend::Postgres;
    let path = format!("$.\"{key}\"");
    let (sql, rhs): (&str, SimpleExpr) = match (literal, postgres) {
        (Literal::Str(s), true) => (
            r#"(CASE WHEN jsonb_typeof("attributes" -> $1) = 'string' THEN "attributes" ->> $2 END)"#,
            Expr::val(s.clone()),
        ),
        (Literal::Str(s), false) => (
            r#"(CASE WHEN json_type("attributes", ?) = 'text' THEN json_extract("attributes", ?) END)"#,
            Expr::val(s.clone()),
        ),
        (Literal::Num(n), true) => (
            r#"(CASE WHEN jsonb_typeof("attributes" -> $1) = 'number' THEN ("attributes" ->> $2)::float8 END)"#,
            Expr::val(*n),
        ),
        (Literal::Num(n), false) => (
            r#"(CASE WHEN json_type("attributes", ?) IN ('integer', 'real') THEN json_extract("attributes", ?) END)"#,
            Expr::val(*n),
        ),
        (Literal::Bool(b), true) => (
            r#"(CASE WHEN jsonb_typeof("attributes" -> $1) = 'boolean' THEN "attributes" ->> $2 END)"#,
            Expr::val(b.to_string()),
        ),
        (Literal::Bool(b), false) => (
            r#"(CASE WHEN json_type("attributes", ?) IN ('true', 'false') THEN json_type("attributes", ?) END)"#,
            Expr::val(b.to_string()),
        ),
    };
    let arg = if postgres { key.to_owned() } else { path };
    (Expr::cust_with_values(sql, [arg.clone(), arg]), rhs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let q = Query::parse(
            r#"hardware = "rpi4" and attributes.site = "sg-1" and firmware < "2.0.0""#,
        )
        .unwrap();
        let Query::And(left, right) = q else {
            panic!("and at the top")
        };
        assert!(matches!(*left, Query::And(..)));
        assert_eq!(
            *right,
            Query::Compare(Field::Firmware, Op::Lt, Literal::Str("2.0.0".into()))
        );
    }

    #[test]
    fn precedence_and_nesting() {
        let q = Query::parse(r#"not (id = "a" or id = "b") and attributes.rack >= 3"#).unwrap();
        assert!(matches!(q, Query::And(ref l, _) if matches!(**l, Query::Not(_))));
        let q = Query::parse(r#"id = "a" or id = "b" and id = "c""#).unwrap();
        assert!(matches!(q, Query::Or(..)), "and binds tighter than or");
    }

    #[test]
    fn errors_point_at_the_bad_token() {
        let cases = [
            (
                r#"hardware = "rpi4" and attributes.site == "sg-1""#,
                39,
                "`==` is not an operator",
            ),
            (r#"hardware = rpi4"#, 12, "expected a value"),
            (r#"color = "red""#, 1, "expected a field"),
            (r#"firmware < "two""#, 12, "semantic version"),
            (r#"hardware = "rpi4" garbage"#, 19, "expected `and`, `or`"),
            (r#"(hardware = "rpi4""#, 19, "expected `)`"),
            (r#"hardware = "rpi4"#, 12, "never closed"),
            (
                r#"attributes.on < true"#,
                17,
                "booleans compare with = and !=",
            ),
            (r#"serial = 5"#, 10, "compares with a \"string\""),
            (r#""#, 1, "expected a field"),
        ];
        for (input, column, message) in cases {
            let err = Query::parse(input).unwrap_err();
            assert_eq!(err.column, column, "{input}: {err}");
            assert!(err.message.contains(message), "{input}: {err}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}id = \"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(Query::parse(&deep).unwrap_err().message.contains("nesting"));
    }
}
