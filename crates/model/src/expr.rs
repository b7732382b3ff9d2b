//! Metric expressions: how a customized family's raw SNMP value becomes the stored one.
//!
//! An expression is arithmetic over one variable, `value` (the value as read for a gauge, the
//! per-second rate for a counter), numbers, `+ - * /` and parentheses: `value * 8`,
//! `value / 100`, `(value - 32) * 5 / 9`. It is parsed once, when the family is loaded, so a
//! bad expression is refused with the family file instead of failing at every poll.

use std::fmt;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr(Node);

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Value,
    Number(f64),
    Neg(Box<Node>),
    Binary(Op, Box<Node>, Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

/// Why an expression was refused, with the byte offset where the problem was found.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{problem} at offset {offset} of {text:?}")]
pub struct ExprError {
    pub text: String,
    pub offset: usize,
    pub problem: String,
}

/// Deepest nesting accepted, so that a hostile family file cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

impl Expr {
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut parser = Parser { text, pos: 0, depth: 0 };
        let node = parser.sum()?;
        parser.skip_space();
        if parser.pos != text.len() {
            return Err(parser.error("unexpected text"));
        }
        Ok(Expr(node))
    }

    /// The stored value for `value`; `None` when the result is not a finite number (a division
    /// by zero), so that no NaN or infinity ever reaches a DTO.
    pub fn eval(&self, value: f64) -> Option<f64> {
        let result = eval(&self.0, value);
        result.is_finite().then_some(result)
    }
}

fn eval(node: &Node, value: f64) -> f64 {
    match node {
        Node::Value => value,
        Node::Number(n) => *n,
        Node::Neg(inner) => -eval(inner, value),
        Node::Binary(op, a, b) => {
            let (a, b) = (eval(a, value), eval(b, value));
            match op {
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
                Op::Div => a / b,
            }
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, problem: &str) -> ExprError {
        ExprError { text: self.text.to_owned(), offset: self.pos, problem: problem.to_owned() }
    }

    fn skip_space(&mut self) {
        while self.text[self.pos..].starts_with(|c: char| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_space();
        self.text[self.pos..].chars().next()
    }

    fn sum(&mut self) -> Result<Node, ExprError> {
        let mut node = self.product()?;
        while let Some(c @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let op = if c == '+' { Op::Add } else { Op::Sub };
            node = Node::Binary(op, Box::new(node), Box::new(self.product()?));
        }
        Ok(node)
    }

    fn product(&mut self) -> Result<Node, ExprError> {
        let mut node = self.unary()?;
        while let Some(c @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let op = if c == '*' { Op::Mul } else { Op::Div };
            node = Node::Binary(op, Box::new(node), Box::new(self.unary()?));
        }
        Ok(node)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("expression nested too deeply"));
        }
        let node = match self.peek() {
            Some('-') => {
                self.pos += 1;
                Node::Neg(Box::new(self.unary()?))
            }
            Some('(') => {
                self.pos += 1;
                let inner = self.sum()?;
                if self.peek() != Some(')') {
                    return Err(self.error("expected ')'"));
                }
                self.pos += 1;
                inner
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let len = self.text[self.pos..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E'))
                    .unwrap_or(self.text.len() - self.pos);
                let number = &self.text[self.pos..self.pos + len];
                let n: f64 = number.parse().map_err(|_| self.error("not a number"))?;
                self.pos += len;
                Node::Number(n)
            }
            Some(_) if self.text[self.pos..].starts_with("value") => {
                self.pos += "value".len();
                Node::Value
            }
            Some(_) => return Err(self.error("expected a number, 'value', '-' or '('")),
            None => return Err(self.error("unexpected end")),
        };
        self.depth -= 1;
        Ok(node)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_with_precedence() {
        let cases = [
            ("value", 3.0, 3.0),
            ("value * 8", 3.0, 24.0),
            ("value / 100", 250.0, 2.5),
            ("(value - 32) * 5 / 9", 212.0, 100.0),
            ("1 + 2 * value", 3.0, 7.0),
            ("-value + 1", 3.0, -2.0),
            (" 1e3 * value ", 2.0, 2000.0),
        ];
        for (text, value, expected) in cases {
            assert_eq!(Expr::parse(text).unwrap().eval(value), Some(expected), "{text}");
        }
        assert_eq!(Expr::parse("1 / value").unwrap().eval(0.0), None);
    }

    #[test]
    fn refuses_with_an_offset() {
        for (text, offset) in [("value *", 7), ("valu", 0), ("(value", 6), ("value value", 6), ("", 0), ("1..2", 0)] {
            let e = Expr::parse(text).unwrap_err();
            assert_eq!(e.offset, offset, "{text}: {e}");
        }
        let deep = "(".repeat(100) + "value" + &")".repeat(100);
        assert!(Expr::parse(&deep).is_err());
    }
}
