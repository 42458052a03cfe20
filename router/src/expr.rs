//! Skills and skill expressions: a [`Skills`] registry interns skill names (`sales`,
//! `english`, `trainee`) into dense [`SkillId`]s; a [`SkillExpr`] is a boolean formula over
//! an agent's levels in them.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;

use crate::error::RouterError;
use crate::types::{MAX_LEVEL, SkillId};

/// The deepest nesting of parentheses and `!` that [`SkillExpr::parse`] accepts, and the
/// deepest expression the router accepts in a queue or task.
pub const MAX_EXPR_DEPTH: usize = 32;

/// The most distinct skills one registry holds.
pub const MAX_SKILLS: usize = u16::MAX as usize;

/// The registry of skill names: interns names into dense [`SkillId`]s.
#[derive(Debug, Clone, Default)]
pub struct Skills {
    names: Vec<Box<str>>,
    ids: BTreeMap<Box<str>, SkillId>,
}

impl Skills {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Skills::default()
    }

    /// The id of `name`, interning it if new.
    ///
    /// # Errors
    /// [`RouterError::InvalidSkillName`] if `name` is not `[A-Za-z_][A-Za-z0-9_.-]*`, and
    /// [`RouterError::TooManySkills`] when the registry is full.
    pub fn intern(&mut self, name: &str) -> Result<SkillId, RouterError> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        if !is_skill_name(name) {
            return Err(RouterError::InvalidSkillName {
                name: name.to_owned(),
            });
        }
        if self.names.len() >= MAX_SKILLS {
            return Err(RouterError::TooManySkills { max: MAX_SKILLS });
        }
        let id = SkillId(self.names.len() as u16);
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        Ok(id)
    }

    /// The id of `name`, if interned.
    #[must_use]
    pub fn id(&self, name: &str) -> Option<SkillId> {
        self.ids.get(name).copied()
    }

    /// The name of `id`, if this registry issued it.
    #[must_use]
    pub fn name(&self, id: SkillId) -> Option<&str> {
        self.names.get(id.index()).map(|n| &**n)
    }

    /// How many skills are interned.
    #[must_use]
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no skill is interned.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn is_skill_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A comparison between an agent's level in a skill and a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Cmp {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
}

impl Cmp {
    fn holds(self, have: u8, want: u8) -> bool {
        match self {
            Cmp::Lt => have < want,
            Cmp::Le => have <= want,
            Cmp::Eq => have == want,
            Cmp::Ne => have != want,
            Cmp::Ge => have >= want,
            Cmp::Gt => have > want,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Ge => ">=",
            Cmp::Gt => ">",
        }
    }
}

/// A boolean formula over an agent's skill levels, written like
///
/// ```text
/// sales>=3 & (english | spanish) & !trainee
/// ```
///
/// Grammar (whitespace is free; `!` binds tighter than `&`, which binds tighter than `|`):
///
/// ```text
/// expr   := and ( ('|' | '||') and )*
/// and    := unary ( ('&' | '&&') unary )*
/// unary  := '!' unary | atom
/// atom   := '(' expr ')' | '*' | skill [ cmp level ]
/// cmp    := '>=' | '>' | '<=' | '<' | '==' | '=' | '!='
/// skill  := [A-Za-z_][A-Za-z0-9_.-]*
/// level  := 0 … 5
/// ```
///
/// A bare `skill` means `skill>=1` (the agent has it). An agent without a skill has level 0,
/// so `sales<3` also matches agents without `sales`; write `sales & sales<3` to exclude
/// them. `*` matches every agent. Languages are ordinary skills (`english`, `spanish`).
///
/// Build one with [`SkillExpr::parse`] (or [`Router::parse_expr`](crate::Router::parse_expr)),
/// or directly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkillExpr {
    /// Matches every agent (`*`).
    Any,
    /// The agent's level in `skill` compared with `level` (`sales>=3`; a bare `sales` is
    /// `sales>=1`).
    Level {
        /// The skill.
        skill: SkillId,
        /// The comparison.
        cmp: Cmp,
        /// The constant, 0 to [`MAX_LEVEL`].
        level: u8,
    },
    /// Negation (`!e`).
    Not(Box<SkillExpr>),
    /// Conjunction (`a & b & …`); empty means true.
    And(Vec<SkillExpr>),
    /// Disjunction (`a | b | …`); empty means false.
    Or(Vec<SkillExpr>),
}

impl SkillExpr {
    /// `skill>=1`: the agent has the skill.
    #[must_use]
    pub fn has(skill: SkillId) -> SkillExpr {
        SkillExpr::Level {
            skill,
            cmp: Cmp::Ge,
            level: 1,
        }
    }

    /// Parses the textual form (see the grammar above), interning skill names.
    ///
    /// # Errors
    /// [`ExprError`] with the byte offset and what was wrong.
    pub fn parse(text: &str, skills: &mut Skills) -> Result<SkillExpr, ExprError> {
        let mut parser = Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            skills,
            depth: 0,
        };
        parser.skip_ws();
        if parser.pos == parser.bytes.len() {
            return Err(ExprError {
                position: 0,
                kind: ExprErrorKind::Empty,
            });
        }
        let expr = parser.or()?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            return Err(parser.unexpected("`&`, `|` or the end"));
        }
        Ok(expr)
    }

    /// Whether an agent with these levels (indexed by [`SkillId::index`], missing = 0)
    /// matches.
    #[must_use]
    pub fn eval(&self, levels: &[u8]) -> bool {
        match self {
            SkillExpr::Any => true,
            SkillExpr::Level { skill, cmp, level } => {
                cmp.holds(levels.get(skill.index()).copied().unwrap_or(0), *level)
            }
            SkillExpr::Not(e) => !e.eval(levels),
            SkillExpr::And(es) => es.iter().all(|e| e.eval(levels)),
            SkillExpr::Or(es) => es.iter().any(|e| e.eval(levels)),
        }
    }

    /// Nesting depth (a leaf is 1), computed without recursion.
    #[must_use]
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack = vec![(self, 1usize)];
        while let Some((e, d)) = stack.pop() {
            max = max.max(d);
            match e {
                SkillExpr::Any | SkillExpr::Level { .. } => {}
                SkillExpr::Not(inner) => stack.push((inner, d + 1)),
                SkillExpr::And(es) | SkillExpr::Or(es) => {
                    stack.extend(es.iter().map(|e| (e, d + 1)));
                }
            }
        }
        max
    }

    /// Checks what the router needs before it evaluates the expression: depth at most
    /// [`MAX_EXPR_DEPTH`] and levels at most [`MAX_LEVEL`].
    pub(crate) fn validate(&self) -> Result<(), ExprError> {
        if self.depth() > MAX_EXPR_DEPTH {
            return Err(ExprError {
                position: 0,
                kind: ExprErrorKind::TooDeep {
                    max: MAX_EXPR_DEPTH,
                },
            });
        }
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                SkillExpr::Any => {}
                SkillExpr::Level { level, .. } => {
                    if *level > MAX_LEVEL {
                        return Err(ExprError {
                            position: 0,
                            kind: ExprErrorKind::LevelOutOfRange {
                                level: u32::from(*level),
                            },
                        });
                    }
                }
                SkillExpr::Not(inner) => stack.push(inner),
                SkillExpr::And(es) | SkillExpr::Or(es) => stack.extend(es.iter()),
            }
        }
        Ok(())
    }

    /// The skills this expression asks for positively (not under an odd number of `!`,
    /// compared with `>=`, `>` or `==`), sorted and deduplicated. "Most skilled" ranks agents
    /// by the sum of their levels in these.
    #[must_use]
    pub fn positive_skills(&self) -> Vec<SkillId> {
        let mut out = Vec::new();
        let mut stack = vec![(self, false)];
        while let Some((e, negated)) = stack.pop() {
            match e {
                SkillExpr::Any => {}
                SkillExpr::Level { skill, cmp, .. } => {
                    if !negated && matches!(cmp, Cmp::Ge | Cmp::Gt | Cmp::Eq) {
                        out.push(*skill);
                    }
                }
                SkillExpr::Not(inner) => stack.push((inner, !negated)),
                SkillExpr::And(es) | SkillExpr::Or(es) => {
                    stack.extend(es.iter().map(|e| (e, negated)));
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The textual form, with names from `skills` (unknown ids print as `#7`, which does not
    /// parse back).
    #[must_use]
    pub fn display<'a>(&'a self, skills: &'a Skills) -> impl fmt::Display + 'a {
        DisplayExpr { expr: self, skills }
    }
}

struct DisplayExpr<'a> {
    expr: &'a SkillExpr,
    skills: &'a Skills,
}

impl DisplayExpr<'_> {
    fn write(&self, e: &SkillExpr, f: &mut fmt::Formatter<'_>, parent: i8) -> fmt::Result {
        // Precedence: -1 = top level, 0 = or, 1 = and, 2 = unary.
        match e {
            SkillExpr::Any => f.write_str("*"),
            SkillExpr::Level { skill, cmp, level } => {
                match self.skills.name(*skill) {
                    Some(name) => f.write_str(name)?,
                    None => write!(f, "{skill}")?,
                }
                if !(*cmp == Cmp::Ge && *level == 1) {
                    write!(f, "{}{}", cmp.symbol(), level)?;
                }
                Ok(())
            }
            SkillExpr::Not(inner) => {
                f.write_str("!")?;
                self.write(inner, f, 2)
            }
            SkillExpr::And(es) | SkillExpr::Or(es) => {
                let (prec, sep, empty) = if matches!(e, SkillExpr::And(_)) {
                    (1, " & ", "*")
                } else {
                    (0, " | ", "!*")
                };
                match es.as_slice() {
                    [] => f.write_str(empty),
                    [one] => self.write(one, f, parent),
                    _ => {
                        let paren = parent >= prec;
                        if paren {
                            f.write_str("(")?;
                        }
                        for (i, sub) in es.iter().enumerate() {
                            if i > 0 {
                                f.write_str(sep)?;
                            }
                            self.write(sub, f, prec)?;
                        }
                        if paren {
                            f.write_str(")")?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

impl fmt::Display for DisplayExpr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(self.expr, f, -1)
    }
}

/// Why a skill expression did not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("skill expression, at byte {position}: {kind}")]
pub struct ExprError {
    /// Byte offset into the text.
    pub position: usize,
    /// What was wrong.
    pub kind: ExprErrorKind,
}

/// What was wrong with a skill expression.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ExprErrorKind {
    /// The text is empty or blank.
    #[error("empty expression")]
    Empty,
    /// A character or token that does not fit here.
    #[error("found {found:?}, expected {expected}")]
    Unexpected {
        /// What was found.
        found: String,
        /// What would have fitted.
        expected: &'static str,
    },
    /// The text ended too early.
    #[error("unexpected end, expected {expected}")]
    UnexpectedEnd {
        /// What would have fitted.
        expected: &'static str,
    },
    /// A level above [`MAX_LEVEL`].
    #[error("level {level} is out of range 0..=5")]
    LevelOutOfRange {
        /// The level given.
        level: u32,
    },
    /// Nesting deeper than [`MAX_EXPR_DEPTH`].
    #[error("nested deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A skill name could not be interned.
    #[error("skill {name:?} could not be registered (registry full)")]
    TooManySkills {
        /// The name.
        name: String,
    },
}

struct Parser<'t, 's> {
    text: &'t str,
    bytes: &'t [u8],
    pos: usize,
    skills: &'s mut Skills,
    depth: usize,
}

impl Parser<'_, '_> {
    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.pos).copied()
    }

    fn unexpected(&self, expected: &'static str) -> ExprError {
        let kind = match self
            .text
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
        {
            Some(c) => ExprErrorKind::Unexpected {
                found: c.to_string(),
                expected,
            },
            None => ExprErrorKind::UnexpectedEnd { expected },
        };
        ExprError {
            position: self.pos,
            kind,
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return Err(ExprError {
                position: self.pos,
                kind: ExprErrorKind::TooDeep {
                    max: MAX_EXPR_DEPTH,
                },
            });
        }
        Ok(())
    }

    fn or(&mut self) -> Result<SkillExpr, ExprError> {
        let mut terms = vec![self.and()?];
        while self.peek() == Some(b'|') {
            self.pos += 1;
            if self.bytes.get(self.pos) == Some(&b'|') {
                self.pos += 1;
            }
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(SkillExpr::Any)
        } else {
            SkillExpr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<SkillExpr, ExprError> {
        let mut terms = vec![self.unary()?];
        while self.peek() == Some(b'&') {
            self.pos += 1;
            if self.bytes.get(self.pos) == Some(&b'&') {
                self.pos += 1;
            }
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap_or(SkillExpr::Any)
        } else {
            SkillExpr::And(terms)
        })
    }

    fn unary(&mut self) -> Result<SkillExpr, ExprError> {
        match self.peek() {
            Some(b'!') => {
                self.pos += 1;
                self.enter()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(SkillExpr::Not(Box::new(inner)))
            }
            Some(b'(') => {
                self.pos += 1;
                self.enter()?;
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return Err(self.unexpected("`)`"));
                }
                self.pos += 1;
                Ok(inner)
            }
            Some(b'*') => {
                self.pos += 1;
                Ok(SkillExpr::Any)
            }
            Some(c) if c.is_ascii_alphabetic() || c == b'_' => self.level(),
            _ => Err(self.unexpected("a skill name, `!`, `(` or `*`")),
        }
    }

    fn level(&mut self) -> Result<SkillExpr, ExprError> {
        let start = self.pos;
        while self
            .bytes
            .get(self.pos)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        {
            self.pos += 1;
        }
        let name = self.text.get(start..self.pos).unwrap_or_default();
        let skill = self.skills.intern(name).map_err(|_| ExprError {
            position: start,
            kind: ExprErrorKind::TooManySkills {
                name: name.to_owned(),
            },
        })?;
        self.skip_ws();
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let (cmp, len) = match rest {
            [b'>', b'=', ..] => (Cmp::Ge, 2),
            [b'<', b'=', ..] => (Cmp::Le, 2),
            [b'=', b'=', ..] => (Cmp::Eq, 2),
            [b'!', b'=', ..] => (Cmp::Ne, 2),
            [b'>', ..] => (Cmp::Gt, 1),
            [b'<', ..] => (Cmp::Lt, 1),
            [b'=', ..] => (Cmp::Eq, 1),
            _ => {
                return Ok(SkillExpr::has(skill));
            }
        };
        self.pos += len;
        self.skip_ws();
        let digits_start = self.pos;
        let mut value: u32 = 0;
        while let Some(d) = self.bytes.get(self.pos).filter(|c| c.is_ascii_digit()) {
            value = value.saturating_mul(10).saturating_add(u32::from(d - b'0'));
            self.pos += 1;
        }
        if self.pos == digits_start {
            return Err(self.unexpected("a level 0..=5"));
        }
        let level = u8::try_from(value)
            .ok()
            .filter(|&l| l <= MAX_LEVEL)
            .ok_or(ExprError {
                position: digits_start,
                kind: ExprErrorKind::LevelOutOfRange { level: value },
            })?;
        Ok(SkillExpr::Level { skill, cmp, level })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> (SkillExpr, Skills) {
        let mut skills = Skills::new();
        let e = SkillExpr::parse(text, &mut skills).unwrap();
        (e, skills)
    }

    fn levels(skills: &Skills, have: &[(&str, u8)]) -> Vec<u8> {
        let mut v = vec![0; skills.len()];
        for (name, l) in have {
            v[skills.id(name).unwrap().index()] = *l;
        }
        v
    }

    #[test]
    fn parses_the_example_and_evaluates_it() {
        let (e, skills) = parse("sales>=3 & (english | spanish) & !trainee");
        assert_eq!(
            e.display(&skills).to_string(),
            "sales>=3 & (english | spanish) & !trainee"
        );
        assert!(e.eval(&levels(&skills, &[("sales", 3), ("spanish", 1)])));
        assert!(!e.eval(&levels(&skills, &[("sales", 2), ("spanish", 1)])));
        assert!(!e.eval(&levels(&skills, &[("sales", 5)])));
        assert!(!e.eval(&levels(
            &skills,
            &[("sales", 5), ("english", 2), ("trainee", 1)]
        )));
        assert_eq!(
            e.positive_skills(),
            vec![
                skills.id("sales").unwrap(),
                skills.id("english").unwrap(),
                skills.id("spanish").unwrap()
            ]
        );
    }

    #[test]
    fn precedence_is_not_and_or() {
        let (e, skills) = parse("a | b & !c");
        assert_eq!(e.display(&skills).to_string(), "a | b & !c");
        assert!(e.eval(&levels(&skills, &[("a", 1), ("c", 1)])));
        assert!(!e.eval(&levels(&skills, &[("b", 1), ("c", 1)])));
        let (e, _) = parse("a && b || c");
        assert!(matches!(e, SkillExpr::Or(ref v) if v.len() == 2));
    }

    #[test]
    fn comparisons() {
        let (e, skills) = parse("x<3");
        assert!(e.eval(&levels(&skills, &[])));
        assert!(!e.eval(&levels(&skills, &[("x", 3)])));
        for (text, have, want) in [
            ("x==2", 2, true),
            ("x=2", 3, false),
            ("x!=2", 3, true),
            ("x>2", 3, true),
            ("x<=2", 3, false),
            ("x >= 0", 0, true),
        ] {
            let (e, skills) = parse(text);
            assert_eq!(e.eval(&levels(&skills, &[("x", have)])), want, "{text}");
        }
    }

    #[test]
    fn clear_errors() {
        let mut skills = Skills::new();
        let err = |t: &str, s: &mut Skills| SkillExpr::parse(t, s).unwrap_err();
        assert_eq!(err("  ", &mut skills).kind, ExprErrorKind::Empty);
        let e = err("sales >= 7", &mut skills);
        assert_eq!(e.position, 9);
        assert_eq!(e.kind, ExprErrorKind::LevelOutOfRange { level: 7 });
        let e = err("sales & (english", &mut skills);
        assert_eq!(e.kind, ExprErrorKind::UnexpectedEnd { expected: "`)`" });
        let e = err("sales english", &mut skills);
        assert_eq!(e.position, 6);
        assert!(matches!(e.kind, ExprErrorKind::Unexpected { ref found, .. } if found == "e"));
        let e = err("sales >=", &mut skills);
        assert!(matches!(e.kind, ExprErrorKind::UnexpectedEnd { .. }));
        let e = err("& x", &mut skills);
        assert_eq!(e.position, 0);
        let deep = "(".repeat(100) + "x" + &")".repeat(100);
        assert!(matches!(
            err(&deep, &mut skills).kind,
            ExprErrorKind::TooDeep { .. }
        ));
        let nots = "!".repeat(10_000) + "x";
        assert!(matches!(
            err(&nots, &mut skills).kind,
            ExprErrorKind::TooDeep { .. }
        ));
        assert_eq!(
            err("x >= 99999999999999", &mut skills).kind,
            ExprErrorKind::LevelOutOfRange { level: u32::MAX }
        );
        assert!(
            err("x > 2 é", &mut skills)
                .to_string()
                .contains("found \"é\"")
        );
    }

    #[test]
    fn skill_names_are_validated() {
        let mut skills = Skills::new();
        assert!(skills.intern("billing.eu-west_2").is_ok());
        assert!(matches!(
            skills.intern("9lives"),
            Err(RouterError::InvalidSkillName { .. })
        ));
        assert!(skills.intern("").is_err());
        assert_eq!(skills.intern("billing.eu-west_2").unwrap().index(), 0);
    }

    fn arb_expr() -> impl Strategy<Value = SkillExpr> {
        let leaf = prop_oneof![
            Just(SkillExpr::Any),
            (0u16..6, 0usize..6, 0u8..=5).prop_map(|(s, c, l)| SkillExpr::Level {
                skill: SkillId(s),
                cmp: [Cmp::Lt, Cmp::Le, Cmp::Eq, Cmp::Ne, Cmp::Ge, Cmp::Gt][c],
                level: l,
            }),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| SkillExpr::Not(Box::new(e))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(SkillExpr::And),
                prop::collection::vec(inner, 2..4).prop_map(SkillExpr::Or),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Printing then parsing gives an expression that agrees on every agent.
        #[test]
        fn display_round_trips(e in arb_expr(), lv in prop::collection::vec(0u8..=5, 6)) {
            let mut skills = Skills::new();
            for i in 0..6 {
                skills.intern(&format!("s{i}")).unwrap();
            }
            let text = e.display(&skills).to_string();
            let back = SkillExpr::parse(&text, &mut skills).unwrap();
            prop_assert_eq!(e.eval(&lv), back.eval(&lv), "{}", text);
        }

        /// The parser never panics, whatever the text.
        #[test]
        fn parse_never_panics(text in "[a-c&|!()<>=*0-9 ]{0,40}") {
            let mut skills = Skills::new();
            let _ = SkillExpr::parse(&text, &mut skills);
        }
    }
}
