//! The path language of workflow definitions: paths over the run's JSON, input templates
//! and conditions.
//!
//! **Paths** start at `$` and name a field with `.name` (`[A-Za-z0-9_-]+`) or an array
//! element with `[n]`. The first field is one of:
//! - `$.input...`: the run's input;
//! - `$.steps.<id>.output...`: the output of an earlier step (one the step depends on,
//!   directly or not);
//! - `$.item...` and `$.index`: inside a `for_each` step, the current element and its
//!   position.
//!
//! A path that runs past the data (a missing field, an index out of range) gives `null`.
//!
//! **Templates** (a step's `input`): any JSON value; every string that starts with `$.`
//! (or is exactly `$`... not allowed: a path needs a root) is replaced by the value of that
//! path. A string that starts with `$$` is a literal with the first `$` removed (so
//! `"$$.input"` is the text `$.input`). Other strings are kept as they are.
//!
//! **Conditions**: `expr := or`, `or := and ("||" and)*`, `and := unary ("&&" unary)*`,
//! `unary := "!" unary | "(" expr ")" | operand (cmp operand)?`, `cmp := == != < <= > >=`,
//! operands are paths and JSON literals (numbers, `"strings"` or `'strings'`, `true`,
//! `false`, `null`). `==` and `!=` compare JSON values; `<`, `<=`, `>`, `>=` compare two
//! numbers or two strings (anything else is false). An operand alone is true unless it is
//! `null`, `false`, `0` or `""`.

use serde_json::Value;

/// The first field of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Root {
    /// `$.input`.
    Input,
    /// `$.steps.<id>.output`.
    Step(String),
    /// `$.item`.
    Item,
    /// `$.index`.
    Index,
}

/// One step into a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// An object's field.
    Field(String),
    /// An array's element.
    Index(usize),
}

/// A parsed path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// Where it starts.
    pub root: Root,
    /// The way down from there.
    pub segs: Vec<Seg>,
}

/// What a path, a template or a condition is evaluated against.
pub trait Scope {
    /// The run's input.
    fn input(&self) -> &Value;
    /// The output of step `id` (`None`: not finished or no output).
    fn step_output(&self, id: &str) -> Option<&Value>;
    /// The current element of a `for_each` step.
    fn item(&self) -> Option<&Value>;
    /// Its position.
    fn index(&self) -> Option<usize>;
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Parse a path (`$.input.a[0].b`); the error says what is wrong.
pub fn parse_path(s: &str) -> Result<Path, String> {
    let mut p = PathParser { s: s.as_bytes(), i: 0 };
    let path = p.path()?;
    if p.i != s.len() {
        return Err(format!("unexpected {:?} at byte {} of path {s:?}", &s[p.i..], p.i));
    }
    Ok(path)
}

struct PathParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PathParser<'_> {
    fn name(&mut self) -> Result<String, String> {
        let start = self.i;
        while self.s.get(self.i).copied().is_some_and(is_name_byte) {
            self.i += 1;
        }
        if start == self.i {
            return Err(format!("a field name ([A-Za-z0-9_-]+) expected at byte {start}"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn seg(&mut self) -> Result<Option<Seg>, String> {
        match self.s.get(self.i) {
            Some(b'.') => {
                self.i += 1;
                Ok(Some(Seg::Field(self.name()?)))
            }
            Some(b'[') => {
                self.i += 1;
                let start = self.i;
                while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                    self.i += 1;
                }
                let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                let n: usize = digits.parse().map_err(|_| format!("an array index expected at byte {start}"))?;
                if self.s.get(self.i) != Some(&b']') {
                    return Err(format!("']' expected at byte {}", self.i));
                }
                self.i += 1;
                Ok(Some(Seg::Index(n)))
            }
            _ => Ok(None),
        }
    }

    fn path(&mut self) -> Result<Path, String> {
        if self.s.get(self.i) != Some(&b'$') {
            return Err("a path starts with '$'".into());
        }
        self.i += 1;
        if self.s.get(self.i) != Some(&b'.') {
            return Err("a path starts with $.input, $.steps.<id>.output, $.item or $.index".into());
        }
        self.i += 1;
        let root = match self.name()?.as_str() {
            "input" => Root::Input,
            "item" => Root::Item,
            "index" => Root::Index,
            "steps" => {
                if self.s.get(self.i) != Some(&b'.') {
                    return Err("$.steps must be followed by .<step id>.output".into());
                }
                self.i += 1;
                let id = self.name()?;
                if self.s.get(self.i) != Some(&b'.') {
                    return Err(format!("$.steps.{id} must be followed by .output"));
                }
                self.i += 1;
                if self.name()? != "output" {
                    return Err(format!("$.steps.{id} must be followed by .output"));
                }
                Root::Step(id)
            }
            other => {
                return Err(format!(
                    "unknown root {other:?}: a path starts with $.input, $.steps.<id>.output, $.item or $.index"
                ));
            }
        };
        let mut segs = Vec::new();
        while let Some(seg) = self.seg()? {
            segs.push(seg);
        }
        if root == Root::Index && !segs.is_empty() {
            return Err("$.index is a number: nothing can follow it".into());
        }
        Ok(Path { root, segs })
    }
}

impl Path {
    /// The value at this path (`null` where the data ends).
    pub fn eval(&self, scope: &dyn Scope) -> Value {
        let start: Option<Value> = match &self.root {
            Root::Input => Some(scope.input().clone()),
            Root::Step(id) => scope.step_output(id).cloned(),
            Root::Item => scope.item().cloned(),
            Root::Index => scope.index().map(|i| Value::from(i as u64)),
        };
        let mut v = start.unwrap_or(Value::Null);
        for seg in &self.segs {
            v = match (seg, v) {
                (Seg::Field(f), Value::Object(mut m)) => m.remove(f).unwrap_or(Value::Null),
                (Seg::Index(i), Value::Array(mut a)) if *i < a.len() => a.swap_remove(*i),
                _ => Value::Null,
            };
        }
        v
    }
}

/// Paths in a template (see the module doc), in the order found; an error names the bad one.
pub fn template_paths(t: &Value) -> Result<Vec<Path>, String> {
    let mut out = Vec::new();
    walk(t, &mut |s| {
        if is_path_text(s) {
            out.push(parse_path(s).map_err(|e| format!("{s:?}: {e}"))?);
        }
        Ok(())
    })?;
    Ok(out)
}

fn is_path_text(s: &str) -> bool {
    s.starts_with("$.") || (s.starts_with('$') && !s.starts_with("$$"))
}

fn walk(v: &Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().try_for_each(|x| walk(x, f)),
        Value::Object(m) => m.values().try_for_each(|x| walk(x, f)),
        _ => Ok(()),
    }
}

/// The template `t` with its paths replaced by their values in `scope`.
pub fn render(t: &Value, scope: &dyn Scope) -> Value {
    match t {
        Value::String(s) if s.starts_with("$$") => Value::String(s[1..].to_owned()),
        Value::String(s) if is_path_text(s) => parse_path(s).map_or(Value::Null, |p| p.eval(scope)),
        Value::Array(a) => Value::Array(a.iter().map(|x| render(x, scope)).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), render(x, scope))).collect()),
        other => other.clone(),
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A path.
    Path(Path),
    /// A JSON literal.
    Lit(Value),
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `!a`.
    Not(Box<Expr>),
    /// `a <cmp> b`.
    Cmp(Operand, Cmp, Operand),
    /// An operand alone: its truthiness.
    Truthy(Operand),
}

/// Parse a condition (see the module doc).
pub fn parse_condition(s: &str) -> Result<Expr, String> {
    let mut p = ExprParser { s, i: 0 };
    let e = p.or()?;
    p.ws();
    if p.i != s.len() {
        return Err(format!("unexpected {:?} at byte {}", &s[p.i..], p.i));
    }
    Ok(e)
}

struct ExprParser<'a> {
    s: &'a str,
    i: usize,
}

impl ExprParser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.i..]
    }
    fn ws(&mut self) {
        while self.rest().starts_with(|c: char| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.ws();
        if self.rest().starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut l = self.and()?;
        while self.eat("||") {
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut l = self.unary()?;
        while self.eat("&&") {
            l = Expr::And(Box::new(l), Box::new(self.unary()?));
        }
        Ok(l)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        self.ws();
        if self.rest().starts_with('!') && !self.rest().starts_with("!=") {
            self.i += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(format!("')' expected at byte {}", self.i));
            }
            return Ok(e);
        }
        let l = self.operand()?;
        self.ws();
        let ops = [("==", Cmp::Eq), ("!=", Cmp::Ne), ("<=", Cmp::Le), (">=", Cmp::Ge), ("<", Cmp::Lt), (">", Cmp::Gt)];
        for (tok, op) in ops {
            if self.eat(tok) {
                let r = self.operand()?;
                return Ok(Expr::Cmp(l, op, r));
            }
        }
        Ok(Expr::Truthy(l))
    }
    fn operand(&mut self) -> Result<Operand, String> {
        self.ws();
        let rest = self.rest();
        if rest.starts_with('$') {
            let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "$._-[]".contains(c))).unwrap_or(rest.len());
            let p = parse_path(&rest[..len])?;
            self.i += len;
            return Ok(Operand::Path(p));
        }
        if let Some(q) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let end = body.find(q).ok_or_else(|| format!("unterminated string at byte {}", self.i))?;
            let text = body[..end].to_owned();
            self.i += end + 2;
            return Ok(Operand::Lit(Value::String(text)));
        }
        for (word, v) in [("true", Value::Bool(true)), ("false", Value::Bool(false)), ("null", Value::Null)] {
            if rest.starts_with(word) && !rest[word.len()..].starts_with(|c: char| c.is_ascii_alphanumeric()) {
                self.i += word.len();
                return Ok(Operand::Lit(v));
            }
        }
        let len = rest.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(rest.len());
        if len > 0
            && let Ok(n) = serde_json::from_str::<serde_json::Number>(&rest[..len])
        {
            self.i += len;
            return Ok(Operand::Lit(Value::Number(n)));
        }
        Err(format!("a path or a literal expected at byte {}", self.i))
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

impl Operand {
    fn eval(&self, scope: &dyn Scope) -> Value {
        match self {
            Operand::Path(p) => p.eval(scope),
            Operand::Lit(v) => v.clone(),
        }
    }
}

impl Expr {
    /// Whether the condition holds in `scope`.
    pub fn eval(&self, scope: &dyn Scope) -> bool {
        match self {
            Expr::Or(a, b) => a.eval(scope) || b.eval(scope),
            Expr::And(a, b) => a.eval(scope) && b.eval(scope),
            Expr::Not(a) => !a.eval(scope),
            Expr::Truthy(o) => truthy(&o.eval(scope)),
            Expr::Cmp(l, op, r) => {
                let (l, r) = (l.eval(scope), r.eval(scope));
                let ord = match (&l, &r) {
                    (Value::Number(a), Value::Number(b)) => {
                        a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b))
                    }
                    (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                    _ => None,
                };
                match op {
                    Cmp::Eq => ord.map_or(l == r, |o| o.is_eq()),
                    Cmp::Ne => !ord.map_or(l == r, |o| o.is_eq()),
                    Cmp::Lt => ord.is_some_and(|o| o.is_lt()),
                    Cmp::Le => ord.is_some_and(|o| o.is_le()),
                    Cmp::Gt => ord.is_some_and(|o| o.is_gt()),
                    Cmp::Ge => ord.is_some_and(|o| o.is_ge()),
                }
            }
        }
    }

    /// Every path the condition reads.
    pub fn paths(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Path>) {
        let mut op = |o: &'a Operand| {
            if let Operand::Path(p) = o {
                out.push(p);
            }
        };
        match self {
            Expr::Or(a, b) | Expr::And(a, b) => {
                a.collect(out);
                b.collect(out);
            }
            Expr::Not(a) => a.collect(out),
            Expr::Truthy(o) => op(o),
            Expr::Cmp(l, _, r) => {
                op(l);
                op(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct S {
        input: Value,
        out: Value,
        item: Option<Value>,
    }
    impl Scope for S {
        fn input(&self) -> &Value {
            &self.input
        }
        fn step_output(&self, id: &str) -> Option<&Value> {
            (id == "price").then_some(&self.out)
        }
        fn item(&self) -> Option<&Value> {
            self.item.as_ref()
        }
        fn index(&self) -> Option<usize> {
            self.item.as_ref().map(|_| 3)
        }
    }

    fn s() -> S {
        S {
            input: json!({"order": {"id": "o-1", "items": [{"sku": "a"}, {"sku": "b"}]}, "n": 5}),
            out: json!({"total": 12.5, "ok": true}),
            item: Some(json!({"sku": "x"})),
        }
    }

    #[test]
    fn paths_read_input_steps_items_and_indexes() {
        let sc = s();
        let at = |p: &str| parse_path(p).unwrap().eval(&sc);
        assert_eq!(at("$.input.order.id"), json!("o-1"));
        assert_eq!(at("$.input.order.items[1].sku"), json!("b"));
        assert_eq!(at("$.input.order.items[9].sku"), Value::Null);
        assert_eq!(at("$.input.missing.deeper"), Value::Null);
        assert_eq!(at("$.steps.price.output.total"), json!(12.5));
        assert_eq!(at("$.steps.price.output"), json!({"total": 12.5, "ok": true}));
        assert_eq!(at("$.steps.other.output"), Value::Null);
        assert_eq!(at("$.item.sku"), json!("x"));
        assert_eq!(at("$.index"), json!(3));
        assert_eq!(at("$.input"), sc.input);
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        for bad in [
            "input.a",
            "$",
            "$input",
            "$.foo",
            "$.steps",
            "$.steps.a",
            "$.steps.a.result",
            "$.input[x]",
            "$.input[1",
            "$.input..a",
            "$.index.a",
            "$.input.a b",
        ] {
            assert!(parse_path(bad).is_err(), "{bad} parsed");
        }
        assert!(parse_path("$.steps.my-step_2.output[0].a").is_ok());
    }

    #[test]
    fn templates_replace_paths_and_keep_escaped_and_plain_strings() {
        let t = json!({"id": "$.input.order.id", "lit": "$$.input", "plain": "hello $", "n": 1,
            "all": ["$.steps.price.output.total", "$.item"]});
        let out = render(&t, &s());
        assert_eq!(
            out,
            json!({"id": "o-1", "lit": "$.input", "plain": "hello $", "n": 1, "all": [12.5, {"sku": "x"}]})
        );
        assert_eq!(template_paths(&t).unwrap().len(), 3);
        assert!(template_paths(&json!({"a": "$.nope"})).is_err());
        assert!(template_paths(&json!({"a": "$oops"})).is_err());
        assert!(template_paths(&json!({"a": "$$oops"})).unwrap().is_empty());
    }

    #[test]
    fn conditions_compare_combine_and_negate() {
        let sc = s();
        let c = |e: &str| parse_condition(e).unwrap().eval(&sc);
        assert!(c("$.steps.price.output.total > 10"));
        assert!(!c("$.steps.price.output.total > 20"));
        assert!(c("$.steps.price.output.total >= 12.5 && $.steps.price.output.total <= 12.5"));
        assert!(c("$.input.order.id == \"o-1\""));
        assert!(c("$.input.order.id == 'o-1'"));
        assert!(c("$.input.order.id != 'o-2'"));
        assert!(c("$.steps.price.output.ok"));
        assert!(c("$.steps.price.output.ok == true"));
        assert!(!c("!$.steps.price.output.ok"));
        assert!(c("!$.input.missing"));
        assert!(c("$.input.missing == null"));
        assert!(c("$.input.n < 3 || $.input.n == 5"));
        assert!(!c("$.input.n < 3 || ($.input.n == 5 && false)"));
        assert!(c("!($.input.n < 3)"));
        assert!(!c("$.input.order.id < 3"), "a string is not less than a number");
        assert!(c("$.input.n == 5.0"));
        assert!(!c("0"));
        assert!(!c("''"));
        assert!(c("'a' < 'b'"));
        let e = parse_condition("$.steps.price.output.ok && $.input.n > 1").unwrap();
        assert_eq!(e.paths().len(), 2);
    }

    #[test]
    fn bad_conditions_are_refused() {
        for bad in ["", "$.input ==", "($.input", "$.input === 1", "$.nope == 1", "'open", "a", "1 2", "&& 1"] {
            assert!(parse_condition(bad).is_err(), "{bad:?} parsed");
        }
    }
}
