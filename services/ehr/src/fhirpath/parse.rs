//! FHIRPath (N1, as used by FHIR R4) text → syntax tree.
//!
//! Operator precedence follows the specification's table, loosest first: `implies`;
//! `or` `xor`; `and`; `in` `contains`; `=` `~` `!=` `!~`; `<` `>` `<=` `>=`; `|`;
//! `is` `as`; `+` `-` `&`; `*` `/` `div` `mod`; unary `+` `-`; then `.` and `[]`.

use regex::Regex;

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    /// `$this`, `$index`, `$total`
    This,
    Index,
    Total,
    /// `%resource`, `%context`, `%ucum`, …
    Variable(String),
    /// An identifier invoked on the input (`name`, `Patient`).
    Member(Option<Box<Expr>>, String),
    /// A function invoked on the receiver, or on the input when there is none.
    Function(Option<Box<Expr>>, Function),
    Indexer(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeName),
    As(Box<Expr>, TypeName),
}

#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub args: Vec<Expr>,
    /// The compiled pattern when the first argument of `matches`/`replaceMatches` is a literal.
    pub regex: Option<Regex>,
}

#[derive(Debug, Clone)]
pub enum Literal {
    Boolean(bool),
    String(String),
    Integer(i64),
    Decimal(f64),
    Date(String),
    DateTime(String),
    Time(String),
    Quantity(f64, String),
}

/// A type specifier: `Patient`, `FHIR.Quantity`, `System.String`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeName {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Equal,
    Equivalent,
    NotEqual,
    NotEquivalent,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
    Union,
    Add,
    Subtract,
    Concatenate,
    Multiply,
    Divide,
    Div,
    Mod,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    /// A `backtick` identifier: never a keyword.
    Delimited(String),
    String(String),
    Number(String),
    DateTime(String),
    Variable(String),
    Special(String),
    Symbol(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath syntax error at character {at}: {message}")]
pub struct SyntaxError {
    pub at: usize,
    pub message: String,
}

fn err<T>(at: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError {
        at,
        message: message.into(),
    })
}

const SYMBOLS: [&str; 20] = [
    "<=", ">=", "!=", "!~", "(", ")", "[", "]", "{", "}", ".", ",", "=", "~", "<", ">", "|", "+",
    "-", "&",
];

fn lex(text: &str) -> Result<Vec<(usize, Token)>, SyntaxError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if text[i..].starts_with("/*") {
            match text[i + 2..].find("*/") {
                Some(n) => i += n + 4,
                None => return err(i, "unterminated comment"),
            }
            continue;
        }
        let token = match c {
            b'\'' | b'`' => {
                let (s, next) = quoted(text, i)?;
                i = next;
                if c == b'\'' {
                    Token::String(s)
                } else {
                    Token::Delimited(s)
                }
            }
            b'0'..=b'9' => {
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                    i += 1;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                Token::Number(text[start..i].to_string())
            }
            b'@' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit() || b"-:T.+Z".contains(&bytes[i]))
                {
                    i += 1;
                }
                Token::DateTime(text[start + 1..i].to_string())
            }
            b'%' => {
                i += 1;
                match bytes.get(i) {
                    Some(b'`' | b'\'') => {
                        let (s, next) = quoted(text, i)?;
                        i = next;
                        Token::Variable(s)
                    }
                    _ => {
                        let n = identifier_len(&text[i..]);
                        if n == 0 {
                            return err(start, "a variable needs a name");
                        }
                        i += n;
                        Token::Variable(text[start + 1..i].to_string())
                    }
                }
            }
            b'$' => {
                i += 1;
                let n = identifier_len(&text[i..]);
                i += n;
                Token::Special(text[start + 1..i].to_string())
            }
            b'*' => {
                i += 1;
                Token::Symbol("*")
            }
            b'/' => {
                i += 1;
                Token::Symbol("/")
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                i += identifier_len(&text[i..]);
                Token::Identifier(text[start..i].to_string())
            }
            _ => match SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
                Some(s) => {
                    i += s.len();
                    Token::Symbol(s)
                }
                None => {
                    let ch = text[i..].chars().next().unwrap_or('?');
                    return err(i, format!("unexpected character {ch:?}"));
                }
            },
        };
        out.push((start, token));
    }
    Ok(out)
}

fn identifier_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count()
}

/// A quoted string or delimited identifier starting at `start`, with escapes resolved.
fn quoted(text: &str, start: usize) -> Result<(String, usize), SyntaxError> {
    let quote = text.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((n, c)) = chars.next() {
        match c {
            '\\' => {
                let Some((_, e)) = chars.next() else {
                    break;
                };
                match e {
                    't' => out.push('\t'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    'f' => out.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                            Some(c) => out.push(c),
                            None => return err(start + 1 + n, "bad \\u escape"),
                        }
                    }
                    other => out.push(other),
                }
            }
            c if c == quote => return Ok((out, start + 1 + n + 1)),
            c => out.push(c),
        }
    }
    err(start, "unterminated string")
}

const CALENDAR_UNITS: [&str; 16] = [
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

/// Parses a FHIRPath expression.
pub fn parse(text: &str) -> Result<Expr, SyntaxError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: text.len(),
    };
    let expr = parser.expression(0)?;
    if let Some((at, token)) = parser.tokens.get(parser.pos) {
        return err(*at, format!("unexpected {token:?}"));
    }
    Ok(expr)
}

/// Binding power of an infix operator token, loosest = 1.
fn infix(token: &Token) -> Option<(u8, Option<BinaryOp>)> {
    use BinaryOp::*;
    let op = match token {
        Token::Identifier(word) => match word.as_str() {
            "implies" => (1, Some(Implies)),
            "or" => (2, Some(Or)),
            "xor" => (2, Some(Xor)),
            "and" => (3, Some(And)),
            "in" => (4, Some(In)),
            "contains" => (4, Some(Contains)),
            "is" | "as" => (8, None),
            "div" => (10, Some(Div)),
            "mod" => (10, Some(Mod)),
            _ => return None,
        },
        Token::Symbol(s) => match *s {
            "=" => (5, Some(Equal)),
            "~" => (5, Some(Equivalent)),
            "!=" => (5, Some(NotEqual)),
            "!~" => (5, Some(NotEquivalent)),
            "<" => (6, Some(Less)),
            ">" => (6, Some(Greater)),
            "<=" => (6, Some(LessOrEqual)),
            ">=" => (6, Some(GreaterOrEqual)),
            "|" => (7, Some(Union)),
            "+" => (9, Some(Add)),
            "-" => (9, Some(Subtract)),
            "&" => (9, Some(Concatenate)),
            "*" => (10, Some(Multiply)),
            "/" => (10, Some(Divide)),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        token
    }

    fn expect(&mut self, symbol: &'static str) -> Result<(), SyntaxError> {
        let at = self.at();
        match self.next() {
            Some(Token::Symbol(s)) if s == symbol => Ok(()),
            other => err(at, format!("expected {symbol:?}, found {other:?}")),
        }
    }

    fn expression(&mut self, min_power: u8) -> Result<Expr, SyntaxError> {
        let mut left = self.unary()?;
        while let Some((power, op)) = self.peek().and_then(infix) {
            if power <= min_power {
                break;
            }
            let word = self.next();
            left = match op {
                Some(op) => {
                    let right = self.expression(power)?;
                    Expr::Binary(op, Box::new(left), Box::new(right))
                }
                None => {
                    let name = self.type_name()?;
                    if word == Some(Token::Identifier("is".into())) {
                        Expr::Is(Box::new(left), name)
                    } else {
                        Expr::As(Box::new(left), name)
                    }
                }
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek() {
            Some(Token::Symbol("-")) => {
                self.pos += 1;
                Ok(Expr::Negate(Box::new(self.unary()?)))
            }
            Some(Token::Symbol("+")) => {
                self.pos += 1;
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let mut expr = self.term()?;
        loop {
            match self.peek() {
                Some(Token::Symbol(".")) => {
                    self.pos += 1;
                    expr = self.invocation(Some(Box::new(expr)))?;
                }
                Some(Token::Symbol("[")) => {
                    self.pos += 1;
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    expr = Expr::Indexer(Box::new(expr), Box::new(index));
                }
                _ => return Ok(expr),
            }
        }
    }

    fn name(&mut self) -> Result<String, SyntaxError> {
        let at = self.at();
        match self.next() {
            Some(Token::Identifier(name) | Token::Delimited(name)) => Ok(name),
            other => err(at, format!("expected a name, found {other:?}")),
        }
    }

    fn type_name(&mut self) -> Result<TypeName, SyntaxError> {
        let first = self.name()?;
        if self.peek() == Some(&Token::Symbol(".")) {
            self.pos += 1;
            let name = self.name()?;
            return Ok(TypeName {
                namespace: Some(first),
                name,
            });
        }
        Ok(TypeName {
            namespace: None,
            name: first,
        })
    }

    /// A member or function after `.` (or at the start of a term).
    fn invocation(&mut self, receiver: Option<Box<Expr>>) -> Result<Expr, SyntaxError> {
        let at = self.at();
        let name = match self.next() {
            Some(Token::Identifier(name) | Token::Delimited(name)) => name,
            Some(Token::Special(s)) if receiver.is_none() => {
                return match s.as_str() {
                    "this" => Ok(Expr::This),
                    "index" => Ok(Expr::Index),
                    "total" => Ok(Expr::Total),
                    _ => err(at, format!("unknown ${s}")),
                };
            }
            other => return err(at, format!("expected a name, found {other:?}")),
        };
        if self.peek() != Some(&Token::Symbol("(")) {
            return Ok(Expr::Member(receiver, name));
        }
        self.pos += 1;
        let mut args = Vec::new();
        if self.peek() == Some(&Token::Symbol(")")) {
            self.pos += 1;
        } else {
            loop {
                // Type arguments (`is(Patient)`, `ofType(FHIR.Quantity)`) parse as members.
                args.push(self.expression(0)?);
                let at = self.at();
                match self.next() {
                    Some(Token::Symbol(",")) => continue,
                    Some(Token::Symbol(")")) => break,
                    other => return err(at, format!("expected ',' or ')', found {other:?}")),
                }
            }
        }
        let regex = match (name.as_str(), args.first()) {
            ("matches" | "replaceMatches", Some(Expr::Literal(Literal::String(pattern)))) => {
                match Regex::new(&format!("(?s){pattern}")) {
                    Ok(re) => Some(re),
                    Err(e) => return err(at, format!("bad regular expression: {e}")),
                }
            }
            _ => None,
        };
        Ok(Expr::Function(receiver, Function { name, args, regex }))
    }

    fn term(&mut self) -> Result<Expr, SyntaxError> {
        let at = self.at();
        match self.peek().cloned() {
            Some(Token::Symbol("(")) => {
                self.pos += 1;
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Some(Token::Symbol("{")) => {
                self.pos += 1;
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Some(Token::String(s)) => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::String(s)))
            }
            Some(Token::Number(n)) => {
                self.pos += 1;
                let unit = match self.peek() {
                    Some(Token::String(unit)) => Some(unit.clone()),
                    Some(Token::Identifier(word)) if CALENDAR_UNITS.contains(&word.as_str()) => {
                        Some(word.clone())
                    }
                    _ => None,
                };
                let value: f64 = match n.parse() {
                    Ok(v) => v,
                    Err(_) => return err(at, "bad number"),
                };
                if let Some(unit) = unit {
                    self.pos += 1;
                    return Ok(Expr::Literal(Literal::Quantity(value, unit)));
                }
                if n.contains('.') {
                    return Ok(Expr::Literal(Literal::Decimal(value)));
                }
                match n.parse() {
                    Ok(i) => Ok(Expr::Literal(Literal::Integer(i))),
                    Err(_) => err(at, "integer out of range"),
                }
            }
            Some(Token::DateTime(s)) => {
                self.pos += 1;
                if let Some(time) = s.strip_prefix('T') {
                    Ok(Expr::Literal(Literal::Time(time.to_string())))
                } else if s.contains('T') {
                    Ok(Expr::Literal(Literal::DateTime(s)))
                } else {
                    Ok(Expr::Literal(Literal::Date(s)))
                }
            }
            Some(Token::Variable(name)) => {
                self.pos += 1;
                Ok(Expr::Variable(name))
            }
            Some(Token::Identifier(word)) if word == "true" || word == "false" => {
                self.pos += 1;
                Ok(Expr::Literal(Literal::Boolean(word == "true")))
            }
            Some(Token::Identifier(_) | Token::Delimited(_) | Token::Special(_)) => {
                self.invocation(None)
            }
            other => err(at, format!("unexpected {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_follows_the_specification() {
        let e = parse("a = b or c and d implies e").unwrap();
        let Expr::Binary(BinaryOp::Implies, left, _) = e else {
            panic!("{e:?}")
        };
        let Expr::Binary(BinaryOp::Or, l, r) = *left else {
            panic!()
        };
        assert!(matches!(*l, Expr::Binary(BinaryOp::Equal, _, _)));
        assert!(matches!(*r, Expr::Binary(BinaryOp::And, _, _)));
        assert!(matches!(
            parse("Observation.value as Quantity | x").unwrap(),
            Expr::Binary(BinaryOp::Union, _, _)
        ));
        assert!(matches!(
            parse("-1 + 2 * 3").unwrap(),
            Expr::Binary(BinaryOp::Add, _, _)
        ));
    }

    #[test]
    fn literals_and_keywords_used_as_names() {
        assert!(matches!(
            parse("4.5 'mg'").unwrap(),
            Expr::Literal(Literal::Quantity(v, u)) if v == 4.5 && u == "mg"
        ));
        assert!(matches!(
            parse("@2020-01-01T10:00:00Z").unwrap(),
            Expr::Literal(Literal::DateTime(_))
        ));
        assert!(matches!(
            parse("@T10:00").unwrap(),
            Expr::Literal(Literal::Time(_))
        ));
        parse("text.`div`.exists() and reference.contains('x') and a contains b").unwrap();
        parse("x.where(resolve() is Patient).as(FHIR.Reference)").unwrap();
        parse("%`vs-x`.exists() // trailing comment").unwrap();
    }

    #[test]
    fn syntax_errors_say_where() {
        for bad in ["a.", "a +", "(a", "'open", "a ! b", "x.matches('[')", "1 2"] {
            let e = parse(bad).unwrap_err();
            assert!(e.at <= bad.len(), "{bad}: {e}");
        }
    }
}
