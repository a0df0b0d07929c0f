//! Needs-based segments (DF-6): a segment is a CEL (Common Expression
//! Language) expression over a customer's facts; a customer is a member
//! when it evaluates to `true`.
//!
//! # The customer facts
//!
//! Money is in minor units of the tier policy's currency (an `int`).
//! A fact the projections do not hold for a customer (no value row yet, no
//! lifetime value, no purchase) is *unbound*: an expression that reads it
//! fails for that customer, who is then not a member. The collections
//! (`needs`, `wallet`, `traits`, `channels`) are always bound, empty when
//! nothing is known; test for a key with `"k" in wallet` or `has(traits.k)`.
//!
//! | fact | type | meaning |
//! |---|---|---|
//! | `tier` | string | `"MOST_VALUABLE"`, `"MOST_GROWABLE"`, `"NORMAL"` or `"BELOW_ZERO"` |
//! | `historical_margin` | int | margin of their orders, net of returns |
//! | `clv` | int | discounted lifetime value from the active model |
//! | `referral_value`, `referred_count` | int | margin of the customers credited to them as referred, and how many |
//! | `real_value` | int | historical margin + CLV + referral value |
//! | `cost_to_serve` | int | interactions × the policy's cost per interaction of their channel |
//! | `net_value` | int | real value − cost to serve |
//! | `strategic_value` | int | growth potential: Σ max(declared spend − our spend, 0) over categories |
//! | `rfm` | map | `rfm.r`, `rfm.f`, `rfm.m` (quintiles 1..5) and `rfm.code` (`"545"`) |
//! | `p_alive` | double | probability of being alive (active model) |
//! | `expected_transactions` | double | expected transactions over the model's horizon |
//! | `order_count`, `transaction_count`, `interaction_count` | int | orders, purchase days, interactions recorded |
//! | `frequency` | int | repeat purchase days (transactions − 1) |
//! | `recency_days` | double | days from the first to the last purchase (the models' recency) |
//! | `age_days` | int | whole days since the first purchase |
//! | `days_since_last_purchase` | int | whole days since the last purchase |
//! | `needs` | list of string | needs stated and not withdrawn (lower case) |
//! | `wallet` | map string → int | declared spend per product category |
//! | `traits` | map string → value | profile traits (string, int, double, bool; instants as RFC 3339 text) |
//! | `channels` | map string → int | interactions per channel (`"web"`, `"call_centre"`, …) |
//! | `customer_id` | string | the profile id |
//!
//! For example `tier == "MOST_GROWABLE" && "eco" in needs`,
//! `p_alive < 0.5 && clv > 100000`,
//! `rfm.r >= 4 && "store" in channels && channels.store > 2`.
//!
//! Expressions are parsed (not type-checked) on creation: a syntax error,
//! a name that is not a fact, or macros (`all`, `exists`, `map`, `filter`…)
//! nested more than [`MAX_NESTING`] deep are refused with the reason.
//! Evaluation errors (a missing key, comparing a string with an int, a
//! non-boolean result) mean "not a member" for that customer.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::{Arc, LazyLock},
};

use cel::{
    Context, Env, IdedExpr, Program, Value,
    common::ast::{EntryExpr, Expr},
    objects::Key,
};

/// Longest expression, in characters.
pub const MAX_EXPRESSION_CHARS: usize = 4096;

/// Deepest nesting of comprehension macros (`all`, `exists`, `map`…),
/// which bounds the work one evaluation can do.
pub const MAX_NESTING: usize = 2;

/// The top-level facts, in the documented order.
pub const FACT_NAMES: [&str; 24] = [
    "tier",
    "historical_margin",
    "clv",
    "referral_value",
    "referred_count",
    "real_value",
    "cost_to_serve",
    "net_value",
    "strategic_value",
    "rfm",
    "p_alive",
    "expected_transactions",
    "order_count",
    "transaction_count",
    "interaction_count",
    "frequency",
    "recency_days",
    "age_days",
    "days_since_last_purchase",
    "needs",
    "wallet",
    "traits",
    "channels",
    "customer_id",
];

/// Identifiers CEL itself defines (type names), allowed besides facts.
const CEL_NAMES: [&str; 11] =
    ["int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn"];

/// The standard environment, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A trait's value as a fact.
#[derive(Debug, Clone, PartialEq)]
pub enum TraitFact {
    /// Text (and instants, as RFC 3339).
    Text(String),
    /// Whole number.
    Int(i64),
    /// Real number.
    Double(f64),
    /// Flag.
    Bool(bool),
}

/// What the projections hold about one customer, as facts (see the module
/// documentation for each one's meaning). `None` is an unbound fact.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The customer's id.
    pub customer_id: String,
    /// Tier name.
    pub tier: Option<String>,
    /// Historical margin.
    pub historical_margin: Option<i64>,
    /// Discounted CLV.
    pub clv: Option<i64>,
    /// Referral value.
    pub referral_value: Option<i64>,
    /// Customers credited as referred.
    pub referred_count: Option<i64>,
    /// Real value.
    pub real_value: Option<i64>,
    /// Cost to serve.
    pub cost_to_serve: Option<i64>,
    /// Net value.
    pub net_value: Option<i64>,
    /// Strategic value.
    pub strategic_value: Option<i64>,
    /// RFM quintiles (recency, frequency, monetary).
    pub rfm: Option<(i64, i64, i64)>,
    /// P(alive).
    pub p_alive: Option<f64>,
    /// Expected transactions over the horizon.
    pub expected_transactions: Option<f64>,
    /// Orders recorded.
    pub order_count: Option<i64>,
    /// Purchase days.
    pub transaction_count: Option<i64>,
    /// Interactions recorded.
    pub interaction_count: Option<i64>,
    /// Repeat purchase days.
    pub frequency: Option<i64>,
    /// Days from first to last purchase.
    pub recency_days: Option<f64>,
    /// Whole days since the first purchase.
    pub age_days: Option<i64>,
    /// Whole days since the last purchase.
    pub days_since_last_purchase: Option<i64>,
    /// Stated needs.
    pub needs: BTreeSet<String>,
    /// Declared spend per category.
    pub wallet: BTreeMap<String, i64>,
    /// Profile traits.
    pub traits: BTreeMap<String, TraitFact>,
    /// Interactions per channel.
    pub channels: BTreeMap<String, i64>,
}

fn map_value<V: Into<Value> + Clone>(m: &BTreeMap<String, V>) -> Value {
    let h: std::collections::HashMap<Key, Value> =
        m.iter().map(|(k, v)| (Key::from(k.clone()), v.clone().into())).collect();
    Value::Map(h.into())
}

impl From<TraitFact> for Value {
    fn from(t: TraitFact) -> Value {
        match t {
            TraitFact::Text(s) => s.into(),
            TraitFact::Int(i) => i.into(),
            TraitFact::Double(d) => d.into(),
            TraitFact::Bool(b) => b.into(),
        }
    }
}

impl Facts {
    /// Every fact as a CEL value (`None`: unbound), in [`FACT_NAMES`] order.
    pub fn values(&self) -> Vec<(&'static str, Option<Value>)> {
        let int = |x: Option<i64>| x.map(Value::from);
        let dbl = |x: Option<f64>| x.map(Value::from);
        let rfm = self.rfm.map(|(r, f, m)| {
            let mut h: BTreeMap<String, Value> = BTreeMap::new();
            h.insert("r".into(), r.into());
            h.insert("f".into(), f.into());
            h.insert("m".into(), m.into());
            h.insert("code".into(), format!("{r}{f}{m}").into());
            map_value(&h)
        });
        let needs: Vec<Value> = self.needs.iter().map(|n| Value::from(n.clone())).collect();
        vec![
            ("tier", self.tier.clone().map(Value::from)),
            ("historical_margin", int(self.historical_margin)),
            ("clv", int(self.clv)),
            ("referral_value", int(self.referral_value)),
            ("referred_count", int(self.referred_count)),
            ("real_value", int(self.real_value)),
            ("cost_to_serve", int(self.cost_to_serve)),
            ("net_value", int(self.net_value)),
            ("strategic_value", int(self.strategic_value)),
            ("rfm", rfm),
            ("p_alive", dbl(self.p_alive)),
            ("expected_transactions", dbl(self.expected_transactions)),
            ("order_count", int(self.order_count)),
            ("transaction_count", int(self.transaction_count)),
            ("interaction_count", int(self.interaction_count)),
            ("frequency", int(self.frequency)),
            ("recency_days", dbl(self.recency_days)),
            ("age_days", int(self.age_days)),
            ("days_since_last_purchase", int(self.days_since_last_purchase)),
            ("needs", Some(needs.into())),
            ("wallet", Some(map_value(&self.wallet))),
            ("traits", Some(map_value(&self.traits))),
            ("channels", Some(map_value(&self.channels))),
            ("customer_id", Some(self.customer_id.clone().into())),
        ]
    }
}

/// The facts bound for evaluation: build once per customer, evaluate
/// every segment against it.
pub struct Bound {
    values: Vec<(&'static str, Option<Value>)>,
    context: Context<'static, 'static>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").field("values", &self.values).finish_non_exhaustive()
    }
}

impl Bound {
    /// Bind `facts`.
    pub fn new(facts: &Facts) -> Bound {
        let values = facts.values();
        let mut context = Context::with_env(ENV.clone());
        for (name, value) in &values {
            if let Some(v) = value {
                context.add_variable_from_value(*name, v.clone());
            }
        }
        Bound { values, context }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| *n == name).and_then(|(_, v)| v.as_ref())
    }
}

/// A compiled segment expression.
#[derive(Debug)]
pub struct Rule {
    program: Program,
    /// The fact paths it reads (`["rfm", "r"]`, `["needs"]`), sorted.
    reads: Vec<Vec<String>>,
}

// Rules are compiled once and shared by the feed consumers and the API.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Rule>();
};

/// Why an expression was refused: the parser's (or the checker's) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Walk an expression: the fact paths it reads, its deepest comprehension
/// nesting, and the names that are neither facts nor bound by a macro.
struct Walk<'a> {
    bound: Vec<&'a str>,
    reads: BTreeSet<Vec<String>>,
    unknown: BTreeSet<String>,
    depth: usize,
    deepest: usize,
}

impl<'a> Walk<'a> {
    fn expr(&mut self, e: &'a IdedExpr) {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => self.name(&[name.as_str()]),
            Expr::Select(s) => {
                // A chain of selections on a fact is one path (`rfm.r`);
                // `has(a.b)` reads `a.b` too.
                if let Some(path) = path_of(e) {
                    self.name(&path);
                } else {
                    self.expr(&s.operand);
                }
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    self.expr(t);
                }
                for a in &c.args {
                    self.expr(a);
                }
            }
            Expr::List(l) => l.elements.iter().for_each(|x| self.expr(x)),
            Expr::Map(m) => m.entries.iter().for_each(|x| self.entry(&x.expr)),
            Expr::Struct(s) => s.entries.iter().for_each(|x| self.entry(&x.expr)),
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range);
                self.expr(&c.accu_init);
                self.depth += 1;
                self.deepest = self.deepest.max(self.depth);
                let before = self.bound.len();
                self.bound.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v);
                }
                self.bound.push(&c.accu_var);
                self.expr(&c.loop_cond);
                self.expr(&c.loop_step);
                self.expr(&c.result);
                self.bound.truncate(before);
                self.depth -= 1;
            }
        }
    }

    fn entry(&mut self, e: &'a EntryExpr) {
        match e {
            EntryExpr::StructField(f) => self.expr(&f.value),
            EntryExpr::MapEntry(m) => {
                self.expr(&m.key);
                self.expr(&m.value);
            }
        }
    }

    fn name(&mut self, path: &[&str]) {
        let Some(root) = path.first() else { return };
        if self.bound.contains(root) || CEL_NAMES.contains(root) {
            return;
        }
        if FACT_NAMES.contains(root) {
            // Facts that are maps are read per key; others whole.
            let keep = match *root {
                "rfm" | "traits" | "wallet" | "channels" => 2,
                _ => 1,
            };
            self.reads.insert(path.iter().take(keep).map(|s| (*s).to_owned()).collect());
        } else {
            self.unknown.insert((*root).to_owned());
        }
    }
}

/// The identifier path an expression spells (`a.b.c`), if any.
fn path_of(e: &IdedExpr) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut cur = e;
    loop {
        match &cur.expr {
            Expr::Ident(n) => {
                out.push(n.as_str());
                out.reverse();
                return Some(out);
            }
            Expr::Select(s) => {
                out.push(s.field.as_str());
                cur = &s.operand;
            }
            _ => return None,
        }
    }
}

impl Rule {
    /// Parse and check an expression.
    pub fn compile(expression: &str) -> Result<Rule, Invalid> {
        if expression.trim().is_empty() {
            return Err(Invalid("an expression is required".into()));
        }
        if expression.chars().count() > MAX_EXPRESSION_CHARS {
            return Err(Invalid(format!("at most {MAX_EXPRESSION_CHARS} characters")));
        }
        let program = ENV.compile(expression).map_err(|e| Invalid(e.to_string()))?;
        let mut walk = Walk { bound: vec![], reads: BTreeSet::new(), unknown: BTreeSet::new(), depth: 0, deepest: 0 };
        walk.expr(program.expression());
        if let Some(name) = walk.unknown.iter().next() {
            return Err(Invalid(format!(
                "undeclared reference to '{name}': not a customer fact (the facts are {})",
                FACT_NAMES.join(", ")
            )));
        }
        if walk.deepest > MAX_NESTING {
            return Err(Invalid(format!(
                "macros (all, exists, exists_one, map, filter) nest {} deep; at most {MAX_NESTING}",
                walk.deepest
            )));
        }
        let reads = std::mem::take(&mut walk.reads).into_iter().collect();
        drop(walk);
        Ok(Rule { program, reads })
    }

    /// Whether the customer whose facts are `bound` is a member; an
    /// evaluation error or a result other than `true` is "no", with why.
    pub fn evaluate(&self, bound: &Bound) -> Result<bool, String> {
        match self.program.execute(&bound.context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("the expression gave {} rather than a bool", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether a member, and the facts the expression reads as
    /// "name = value" (an unbound fact as "name is not known"), followed
    /// by the evaluation error, if any.
    pub fn explain(&self, bound: &Bound) -> (bool, Vec<String>) {
        let mut lines: Vec<String> = self.reads.iter().map(|path| describe(bound, path)).collect();
        match self.evaluate(bound) {
            Ok(member) => (member, lines),
            Err(e) => {
                lines.push(format!("not a member: {e}"));
                (false, lines)
            }
        }
    }

    /// The fact paths the expression reads.
    pub fn reads(&self) -> &[Vec<String>] {
        &self.reads
    }
}

fn describe(bound: &Bound, path: &[String]) -> String {
    let name = path.join(".");
    let mut value = path.first().and_then(|root| bound.get(root));
    for key in path.iter().skip(1) {
        value = match value {
            Some(Value::Map(m)) => m.map.get(&Key::from(key.clone())),
            _ => None,
        };
    }
    match value {
        Some(v) => format!("{name} = {}", literal(v)),
        None => format!("{name} is not known"),
    }
}

/// A value written as a CEL literal, maps with sorted keys.
fn literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.as_str()),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => format!("{u}u"),
        Value::Float(f) => {
            let s = f.to_string();
            if s.contains(['.', 'e', 'N', 'i']) { s } else { format!("{s}.0") }
        }
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::List(l) => format!("[{}]", l.iter().map(literal).collect::<Vec<_>>().join(", ")),
        Value::Map(m) => {
            let mut entries: Vec<(String, String)> =
                m.map.iter().map(|(k, v)| (literal(&Value::from(k.clone())), literal(v))).collect();
            entries.sort();
            let mut s = String::from("{");
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                let _ = write!(s, "{k}: {v}");
            }
            s.push('}');
            s
        }
        other => format!("{other:?}"),
    }
}

/// Whether a segment's display name, description or expression text is
/// acceptable: expressions may span lines (tabs and line breaks are
/// allowed), but hold no other control character.
pub fn has_bad_control(expression: &str) -> bool {
    expression.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            customer_id: "c1".into(),
            tier: Some("MOST_GROWABLE".into()),
            clv: Some(120_000),
            real_value: Some(150_000),
            rfm: Some((5, 3, 4)),
            p_alive: Some(0.35),
            frequency: Some(4),
            needs: ["eco".to_owned(), "gift_wrap".to_owned()].into(),
            wallet: [("books".to_owned(), 30_000)].into(),
            traits: [("city".to_owned(), TraitFact::Text("Lisboa".into())), ("kids".to_owned(), TraitFact::Int(2))]
                .into(),
            channels: [("web".to_owned(), 7), ("store".to_owned(), 1)].into(),
            ..Facts::default()
        }
    }

    fn member(expr: &str, f: &Facts) -> Result<bool, String> {
        Rule::compile(expr).expect("compiles").evaluate(&Bound::new(f))
    }

    #[test]
    fn expressions_over_every_kind_of_fact_evaluate() {
        let f = facts();
        for (expr, want) in [
            (r#"tier == "MOST_GROWABLE" && "eco" in needs"#, true),
            ("p_alive < 0.5 && clv > 100000", true),
            ("rfm.r >= 4 && rfm.code == '534'", true),
            ("channels.web > 5 && !('phone' in channels)", true),
            ("wallet.books >= 30000 && traits.city == 'Lisboa' && traits.kids == 2", true),
            ("needs.exists(n, n.startsWith('gift'))", true),
            ("size(needs) == 3", false),
            ("real_value - clv == 30000", true),
            ("frequency >= 5", false),
        ] {
            assert_eq!(member(expr, &f), Ok(want), "{expr}");
        }
    }

    #[test]
    fn evaluation_errors_mean_not_a_member() {
        let f = facts();
        // No such key, an unbound fact, a type mismatch, a non-boolean result.
        for expr in ["traits.unknown == 'x'", "net_value > 0", "tier > 3", "clv + 1", "wallet['toys'] > 0"] {
            let r = member(expr, &f);
            assert!(r.is_err(), "{expr}: {r:?}");
            let (is, lines) = Rule::compile(expr).expect("compiles").explain(&Bound::new(&f));
            assert!(!is);
            assert!(lines.last().is_some_and(|l| l.starts_with("not a member: ")), "{lines:?}");
        }
        // A guarded read is fine.
        assert_eq!(member("has(traits.unknown) && traits.unknown == 'x'", &f), Ok(false));
        assert_eq!(member("'toys' in wallet && wallet.toys > 0", &f), Ok(false));
    }

    #[test]
    fn bad_expressions_are_refused_with_the_parsers_message() {
        let e = Rule::compile("tier == ").expect_err("syntax");
        assert!(e.0.starts_with("ERROR: <input>:1:"), "{e}");
        let e = Rule::compile("tierr == 'NORMAL'").expect_err("unknown name");
        assert!(e.0.contains("'tierr'"), "{e}");
        assert!(Rule::compile("   ").is_err());
        assert!(Rule::compile(&"1 + ".repeat(2000)).is_err());
        let deep = "needs.all(a, needs.all(b, needs.all(c, a == b && b == c)))";
        assert!(Rule::compile(deep).expect_err("too deep").0.contains("nest 3 deep"));
        // Macro variables are not facts, type names are allowed.
        let r = Rule::compile("needs.all(n, type(n) == string) && channels.exists(k, channels[k] > 1)");
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn explain_lists_the_facts_read() {
        let f = facts();
        let rule = Rule::compile("tier == 'MOST_GROWABLE' && rfm.r >= 4 && 'eco' in needs && traits.city == 'Lisboa'")
            .expect("compiles");
        let (is, lines) = rule.explain(&Bound::new(&f));
        assert!(is);
        assert_eq!(
            lines,
            [r#"needs = ["eco", "gift_wrap"]"#, "rfm.r = 5", r#"tier = "MOST_GROWABLE""#, r#"traits.city = "Lisboa""#]
        );
        let rule = Rule::compile("net_value > 0 || p_alive > 0.3 || channels == {}").expect("compiles");
        let (is, lines) = rule.explain(&Bound::new(&f));
        assert!(is, "the second disjunct holds");
        assert_eq!(lines, [r#"channels = {"store": 1, "web": 7}"#, "net_value is not known", "p_alive = 0.35"]);
    }

    #[test]
    fn control_characters_other_than_line_breaks_are_bad() {
        assert!(!has_bad_control("a &&\n\tb"));
        assert!(has_bad_control("a\u{0}"));
    }
}
