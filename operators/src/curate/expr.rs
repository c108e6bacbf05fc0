//! The expression language of `curate.rule`: boolean conditions over a clip's scores and labels.
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | "(" expr ")" | "true" | "false" | compare
//! compare := operand OP operand         OP: < <= > >= == !=
//! operand := NUMBER | STRING | NAME
//! ```
//!
//! * `NAME` (`[A-Za-z_][A-Za-z0-9_.]*`) is a score when compared with a number or another name,
//!   and a label when compared with a string; labels only support `==` and `!=`.
//! * Numbers: `3`, `-0.5`, `1e-3`. Strings: `"teaching"` or `'teaching'`, with `\"`, `\'`, `\\`.
//! * `!` binds tightest, then comparisons, then `&&`, then `||`; comparisons do not chain.
//! * Missing values: a comparison whose score or label the clip lacks (or whose score is NaN) is
//!   *unknown*, and unknowns follow Kleene logic (`false && unknown` is false, `true || unknown`
//!   is true, `!unknown` is unknown). Only a final unknown is settled by the rule's `missing`.
//!
//! Errors carry the 1-based column (in characters) where the problem is, and render with a caret.

use std::collections::BTreeMap;
use std::fmt;

/// A parse or type error, located inside the expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based column, in characters, of the offending token.
    pub column: usize,
    /// Characters the caret spans (at least 1).
    pub width: usize,
    pub message: String,
    pub fix: Option<String>,
}

impl ExprError {
    /// The message with the expression and a caret under the offending token.
    pub fn render(&self, source: &str) -> String {
        let caret = format!("{}{}", " ".repeat(self.column.saturating_sub(1)), "^".repeat(self.width.max(1)));
        format!("column {}: {}\n    {source}\n    {caret}", self.column, self.message)
    }
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
    fn apply<T: PartialOrd>(self, a: &T, b: &T) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// A typed comparison operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Num(f64),
    Str(String),
    /// A score, by name.
    Score(String),
    /// A label, by name.
    Label(String),
}

/// A checked expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Const(bool),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Operand, Operand),
}

/// What an expression reads: scores and labels by name.
pub trait Env {
    fn score(&self, name: &str) -> Option<f64>;
    fn label(&self, name: &str) -> Option<&str>;
}

impl Env for crate::api::Scores {
    fn score(&self, name: &str) -> Option<f64> {
        self.scores.get(name).map(|v| v.0)
    }
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// Plain maps, for tests and callers without a `Scores`.
impl Env for (BTreeMap<String, f64>, BTreeMap<String, String>) {
    fn score(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }
    fn label(&self, name: &str) -> Option<&str> {
        self.1.get(name).map(String::as_str)
    }
}

impl Expr {
    /// Evaluate with Kleene logic: `None` when the result depends on a missing value.
    pub fn eval(&self, env: &dyn Env) -> Option<bool> {
        match self {
            Expr::Const(b) => Some(*b),
            Expr::Not(e) => e.eval(env).map(|b| !b),
            Expr::And(a, b) => match (a.eval(env), b.eval(env)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Expr::Or(a, b) => match (a.eval(env), b.eval(env)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Expr::Cmp(op, l, r) => match (l, r) {
                (Operand::Str(_) | Operand::Label(_), _) | (_, Operand::Str(_) | Operand::Label(_)) => {
                    let a = text(l, env)?;
                    let b = text(r, env)?;
                    Some(op.apply(&a, &b))
                }
                _ => {
                    let a = number(l, env)?;
                    let b = number(r, env)?;
                    Some(op.apply(&a, &b))
                }
            },
        }
    }

    /// Names the expression reads, in order of first appearance: (name, is_label).
    pub fn names(&self) -> Vec<(String, bool)> {
        fn walk(e: &Expr, out: &mut Vec<(String, bool)>) {
            match e {
                Expr::Const(_) => {}
                Expr::Not(x) => walk(x, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Cmp(_, l, r) => {
                    for o in [l, r] {
                        let n = match o {
                            Operand::Score(n) => (n.clone(), false),
                            Operand::Label(n) => (n.clone(), true),
                            _ => continue,
                        };
                        if !out.contains(&n) {
                            out.push(n);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Const(b) => write!(f, "{b}"),
            Expr::Not(e) => write!(f, "!({e})"),
            Expr::And(a, b) => write!(f, "({a} && {b})"),
            Expr::Or(a, b) => write!(f, "({a} || {b})"),
            Expr::Cmp(op, l, r) => {
                let o = |x: &Operand| match x {
                    Operand::Num(n) => format!("{n}"),
                    Operand::Str(s) => format!("{s:?}"),
                    Operand::Score(n) | Operand::Label(n) => n.clone(),
                };
                write!(f, "{} {} {}", o(l), op.as_str(), o(r))
            }
        }
    }
}

fn number(o: &Operand, env: &dyn Env) -> Option<f64> {
    match o {
        Operand::Num(n) => Some(*n),
        Operand::Score(name) => env.score(name).filter(|v| !v.is_nan()),
        _ => None,
    }
}

fn text<'a>(o: &'a Operand, env: &'a dyn Env) -> Option<&'a str> {
    match o {
        Operand::Str(s) => Some(s),
        Operand::Label(name) => env.label(name),
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(f64),
    Str(String),
    Name(String),
    Cmp(CmpOp),
    And,
    Or,
    Not,
    LParen,
    RParen,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("the number {n}"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Name(n) => format!("`{n}`"),
            Tok::Cmp(op) => format!("`{}`", op.as_str()),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Not => "`!`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

/// A token with its 1-based column and width in characters.
#[derive(Clone, Debug)]
struct Spanned {
    tok: Tok,
    col: usize,
    width: usize,
}

fn err(col: usize, width: usize, message: impl Into<String>, fix: Option<&str>) -> ExprError {
    ExprError { column: col, width, message: message.into(), fix: fix.map(str::to_string) }
}

fn lex(src: &str) -> Result<Vec<Spanned>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let (tok, len) = match two.as_str() {
            "&&" => (Tok::And, 2),
            "||" => (Tok::Or, 2),
            "<=" => (Tok::Cmp(CmpOp::Le), 2),
            ">=" => (Tok::Cmp(CmpOp::Ge), 2),
            "==" => (Tok::Cmp(CmpOp::Eq), 2),
            "!=" => (Tok::Cmp(CmpOp::Ne), 2),
            _ => match c {
                '<' => (Tok::Cmp(CmpOp::Lt), 1),
                '>' => (Tok::Cmp(CmpOp::Gt), 1),
                '!' => (Tok::Not, 1),
                '(' => (Tok::LParen, 1),
                ')' => (Tok::RParen, 1),
                '&' => return Err(err(col, 1, "a single `&`", Some("write `&&` for \"and\""))),
                '|' => return Err(err(col, 1, "a single `|`", Some("write `||` for \"or\""))),
                '=' => return Err(err(col, 1, "a single `=`", Some("write `==` to compare"))),
                '"' | '\'' => {
                    let mut s = String::new();
                    let mut j = i + 1;
                    loop {
                        match chars.get(j) {
                            None => {
                                return Err(err(
                                    col,
                                    1,
                                    "this string is never closed",
                                    Some(&format!("add a closing {c}")),
                                ));
                            }
                            Some('\\') => {
                                match chars.get(j + 1) {
                                    Some(e @ ('"' | '\'' | '\\')) => s.push(*e),
                                    Some(e) => {
                                        return Err(err(
                                            j + 1,
                                            2,
                                            format!("unknown escape `\\{e}`"),
                                            Some("only \\\", \\' and \\\\ are escapes"),
                                        ));
                                    }
                                    None => return Err(err(j + 1, 1, "this string is never closed", None)),
                                }
                                j += 2;
                            }
                            Some(q) if *q == c => break,
                            Some(other) => {
                                s.push(*other);
                                j += 1;
                            }
                        }
                    }
                    (Tok::Str(s), j + 1 - i)
                }
                c if c.is_ascii_digit()
                    || c == '.'
                    || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == '.')) =>
                {
                    let mut j = i + 1;
                    while j < chars.len() {
                        let d = chars[j];
                        let exp_sign = (d == '-' || d == '+') && matches!(chars[j - 1], 'e' | 'E');
                        if d.is_ascii_digit() || d == '.' || d == 'e' || d == 'E' || exp_sign {
                            j += 1;
                        } else {
                            break;
                        }
                    }
                    // A number run straight into letters (`4.O`, `3px`) is one bad token.
                    while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '.') {
                        j += 1;
                    }
                    let text: String = chars[i..j].iter().collect();
                    match text.parse::<f64>() {
                        Ok(n) if n.is_finite() => (Tok::Num(n), j - i),
                        _ => {
                            return Err(err(
                                col,
                                j - i,
                                format!("`{text}` is not a number"),
                                Some("write numbers like 3, 0.5, -1 or 1e-3"),
                            ));
                        }
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let mut j = i + 1;
                    while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_' || chars[j] == '.') {
                        j += 1;
                    }
                    let name: String = chars[i..j].iter().collect();
                    let hint = match name.as_str() {
                        "and" | "AND" => Some("write `&&`"),
                        "or" | "OR" => Some("write `||`"),
                        "not" | "NOT" => Some("write `!`"),
                        _ => None,
                    };
                    if let Some(h) = hint {
                        return Err(err(col, j - i, format!("`{name}` is not an operator here"), Some(h)));
                    }
                    (Tok::Name(name), j - i)
                }
                other => {
                    return Err(err(
                        col,
                        1,
                        format!("unexpected character `{other}`"),
                        Some("names are letters, digits, `_` and `.`; strings go in quotes"),
                    ));
                }
            },
        };
        out.push(Spanned { tok, col, width: len });
        i += len;
    }
    out.push(Spanned { tok: Tok::End, col: chars.len() + 1, width: 1 });
    Ok(out)
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
}

/// An untyped operand with where it was.
struct RawOperand {
    tok: Tok,
    col: usize,
    width: usize,
}

impl Parser {
    fn peek(&self) -> &Spanned {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }
    fn next(&mut self) -> Spanned {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.and()?;
        while self.peek().tok == Tok::Or {
            self.next();
            let r = self.and()?;
            e = Expr::Or(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.unary()?;
        while self.peek().tok == Tok::And {
            self.next();
            let r = self.unary()?;
            e = Expr::And(Box::new(e), Box::new(r));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let t = self.peek().clone();
        let e = match &t.tok {
            Tok::Not => {
                self.next();
                return Ok(Expr::Not(Box::new(self.unary()?)));
            }
            Tok::LParen => {
                self.next();
                let e = self.or()?;
                let close = self.next();
                if close.tok != Tok::RParen {
                    return Err(err(
                        close.col,
                        close.width,
                        format!("expected `)` to close the `(` at column {}, found {}", t.col, close.tok.describe()),
                        Some("balance the parentheses"),
                    ));
                }
                e
            }
            Tok::Name(n) if n == "true" || n == "false" => {
                self.next();
                Expr::Const(n == "true")
            }
            Tok::Num(_) | Tok::Str(_) | Tok::Name(_) => return self.compare(),
            other => {
                return Err(err(
                    t.col,
                    t.width,
                    format!("expected a condition, found {}", other.describe()),
                    Some("a condition compares a score or label, e.g. `aesthetic < 4.0` or `category == \"teaching\"`"),
                ));
            }
        };
        if let Tok::Cmp(op) = self.peek().tok {
            let at = self.peek().clone();
            return Err(err(
                at.col,
                at.width,
                format!("cannot compare a condition with `{}`", op.as_str()),
                Some("compare scores or labels, then combine conditions with && and ||"),
            ));
        }
        Ok(e)
    }

    fn operand(&mut self) -> Result<RawOperand, ExprError> {
        let t = self.next();
        match t.tok {
            Tok::Num(_) | Tok::Str(_) | Tok::Name(_) => Ok(RawOperand { tok: t.tok, col: t.col, width: t.width }),
            other => Err(err(
                t.col,
                t.width,
                format!("expected a number, a string or a name, found {}", other.describe()),
                Some("e.g. `technical < 0.3`"),
            )),
        }
    }

    fn compare(&mut self) -> Result<Expr, ExprError> {
        let l = self.operand()?;
        let op_tok = self.next();
        let op = match op_tok.tok {
            Tok::Cmp(op) => op,
            other => {
                let what = match &l.tok {
                    Tok::Name(n) => format!("`{n}` needs a comparison, e.g. `{n} > 0` or `{n} == \"value\"`"),
                    _ => "a value needs a comparison".to_string(),
                };
                let fix = match other {
                    Tok::Name(_) | Tok::Num(_) | Tok::Str(_) => {
                        "put a comparison operator (< <= > >= == !=) between the two values"
                    }
                    _ => "compare it with < <= > >= == or !=",
                };
                let (col, width) = if matches!(other, Tok::End | Tok::And | Tok::Or | Tok::RParen) {
                    (l.col, l.width)
                } else {
                    (op_tok.col, op_tok.width)
                };
                return Err(err(col, width, format!("{what}; found {}", other.describe()), Some(fix)));
            }
        };
        let r = self.operand()?;
        if let Tok::Cmp(op2) = self.peek().tok {
            let at = self.peek().clone();
            return Err(err(
                at.col,
                at.width,
                format!("comparisons do not chain (`a {} b {} c`)", op.as_str(), op2.as_str()),
                Some("write `a < b && b < c`"),
            ));
        }
        type_check(op, &l, &r, op_tok.col, op_tok.width)
    }
}

fn type_check(op: CmpOp, l: &RawOperand, r: &RawOperand, op_col: usize, op_width: usize) -> Result<Expr, ExprError> {
    let is_str = |o: &RawOperand| matches!(o.tok, Tok::Str(_));
    let is_num = |o: &RawOperand| matches!(o.tok, Tok::Num(_));
    let textual = is_str(l) || is_str(r);
    if textual {
        if is_num(l) || is_num(r) {
            let n = if is_num(l) { l } else { r };
            return Err(err(
                n.col,
                n.width,
                "a number cannot be compared with a string",
                Some("labels compare with strings, scores with numbers"),
            ));
        }
        if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Err(err(
                op_col,
                op_width,
                format!("labels only compare with == and !=, not `{}`", op.as_str()),
                None,
            ));
        }
    }
    let conv = |o: &RawOperand| match &o.tok {
        Tok::Num(n) => Operand::Num(*n),
        Tok::Str(s) => Operand::Str(s.clone()),
        Tok::Name(n) if textual => Operand::Label(n.clone()),
        Tok::Name(n) => Operand::Score(n.clone()),
        _ => Operand::Num(f64::NAN),
    };
    Ok(Expr::Cmp(op, conv(l), conv(r)))
}

/// Parse and type-check an expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let toks = lex(src)?;
    if toks.len() == 1 {
        return Err(err(1, 1, "the expression is empty", Some("e.g. drop = \"technical < 0.3 && aesthetic < 4.0\"")));
    }
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    let t = p.peek().clone();
    if t.tok != Tok::End {
        let fix = match t.tok {
            Tok::RParen => "remove it, or add the matching `(`",
            _ => "join conditions with && or ||",
        };
        return Err(err(
            t.col,
            t.width,
            format!("unexpected {} after a complete condition", t.tok.describe()),
            Some(fix),
        ));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(scores: &[(&str, f64)], labels: &[(&str, &str)]) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
        (
            scores.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        )
    }

    fn eval(src: &str, e: &dyn Env) -> Option<bool> {
        parse(src).unwrap_or_else(|e| panic!("{}", e.render(src))).eval(e)
    }

    #[test]
    fn evaluates_the_papers_joint_rule() {
        let rule = "technical < 0.3 && aesthetic < 4.0";
        assert_eq!(eval(rule, &env(&[("technical", 0.2), ("aesthetic", 3.5)], &[])), Some(true));
        assert_eq!(eval(rule, &env(&[("technical", 0.2), ("aesthetic", 4.5)], &[])), Some(false));
        assert_eq!(eval(rule, &env(&[("technical", 0.7), ("aesthetic", 3.0)], &[])), Some(false));
        assert_eq!(
            parse(rule).unwrap().names(),
            vec![("technical".to_string(), false), ("aesthetic".to_string(), false)]
        );
    }

    #[test]
    fn precedence_parentheses_not_labels_numbers() {
        let e = env(&[("a", 1.0), ("b", 2.0), ("c", -0.5)], &[("category", "teaching")]);
        assert_eq!(eval("a > 0 || b > 5 && c > 0", &e), Some(true)); // && binds tighter
        assert_eq!(eval("(a > 0 || b > 5) && c > 0", &e), Some(false));
        assert_eq!(eval("!(a > 0) || !!(b == 2)", &e), Some(true));
        assert_eq!(eval("c >= -0.5 && c <= -5e-1 && a != b && b >= a", &e), Some(true));
        assert_eq!(eval("category == \"teaching\" && category != 'animation'", &e), Some(true));
        assert_eq!(eval("\"teaching\" == category", &e), Some(true));
        assert_eq!(eval("a < b", &e), Some(true));
        assert_eq!(eval("true && !false", &e), Some(true));
        assert_eq!(eval("dover.technical < 1", &env(&[("dover.technical", 0.5)], &[])), Some(true));
        assert_eq!(eval("x == 'it\\'s'", &env(&[], &[("x", "it's")])), Some(true));
    }

    #[test]
    fn missing_values_follow_kleene_logic() {
        let e = env(&[("a", 1.0), ("nan", f64::NAN)], &[]);
        assert_eq!(eval("missing < 1", &e), None);
        assert_eq!(eval("a > 5 && missing < 1", &e), Some(false));
        assert_eq!(eval("missing < 1 && a > 5", &e), Some(false));
        assert_eq!(eval("a > 0 || missing < 1", &e), Some(true));
        assert_eq!(eval("a > 0 && missing < 1", &e), None);
        assert_eq!(eval("!(missing < 1)", &e), None);
        assert_eq!(eval("nan < 1", &e), None);
        assert_eq!(eval("lbl == 'x'", &e), None);
    }

    /// (expression, column, text the message contains)
    #[test]
    fn errors_point_at_the_column() {
        let cases: &[(&str, usize, &str)] = &[
            ("technical < && aesthetic < 4", 13, "expected a number, a string or a name, found `&&`"),
            ("technical < 0.3 & aesthetic < 4", 17, "single `&`"),
            ("technical = 0.3", 11, "single `=`"),
            ("technical < 0.3 and aesthetic < 4", 17, "`and` is not an operator"),
            ("technical", 1, "`technical` needs a comparison"),
            ("technical && a < 1", 1, "`technical` needs a comparison"),
            ("(a < 1", 7, "expected `)` to close the `(` at column 1"),
            ("a < 1)", 6, "unexpected `)`"),
            ("a < 1 b < 2", 7, "unexpected `b` after a complete condition"),
            ("a < b < c", 7, "comparisons do not chain"),
            ("category < 'x'", 10, "labels only compare with == and !="),
            ("category == 3 || x == 'y' && 'y' == 4", 37, "a number cannot be compared with a string"),
            ("name == \"open", 9, "never closed"),
            ("a < 1.2.3", 5, "`1.2.3` is not a number"),
            ("technical < 0.3 && aesthetic < 4.O", 32, "`4.O` is not a number"),
            ("a < 1 && #", 10, "unexpected character `#`"),
            ("(a < 1) < 2", 9, "cannot compare a condition"),
            ("", 1, "empty"),
            ("   ", 1, "empty"),
            ("a < 1 &&", 9, "expected a condition, found the end"),
            ("x == 'a\\nb'", 8, "unknown escape"),
        ];
        for (src, col, text) in cases {
            match parse(src) {
                Ok(e) => panic!("`{src}` parsed as {e}"),
                Err(e) => {
                    assert!(e.message.contains(text), "`{src}`: message {:?} lacks {text:?}", e.message);
                    assert_eq!(e.column, *col, "`{src}`: {}", e.render(src));
                }
            }
        }
        let e = parse("technical < && x").unwrap_err();
        assert_eq!(e.render("technical < && x").lines().nth(2).unwrap(), "                ^^");
    }

    #[test]
    fn displays_canonically() {
        let e = parse("a<1&&!(b>=2||c=='x')").unwrap();
        assert_eq!(e.to_string(), "(a < 1 && !((b >= 2 || c == \"x\")))");
    }
}
