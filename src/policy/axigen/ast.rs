//! The syntax tree of one policy file.

use super::Pos;

#[derive(Debug, Clone)]
pub struct Name {
    pub text: String,
    pub pos: Pos,
}

impl Name {
    pub fn key(&self) -> String {
        self.text.to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    Event,
    Method,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub kind: ItemKind,
    pub name: Name,
    pub body: Vec<Stmt>,
    /// Position of the closing `}`.
    pub end: Pos,
}

#[derive(Debug, Clone)]
pub struct Stmt {
    pub pos: Pos,
    pub kind: StmtKind,
}

#[derive(Debug, Clone)]
pub enum StmtKind {
    Set {
        var: Name,
        value: Value,
    },
    Call(Name),
    Export(Name),
    Return,
    If {
        cond: Cond,
        then: Vec<Stmt>,
        els: Option<Vec<Stmt>>,
    },
    Switch {
        cases: Vec<(Cond, Vec<Stmt>)>,
        default: Option<Vec<Stmt>>,
    },
}

/// A string (or bare number) with its `%variable%` references split out.
#[derive(Debug, Clone)]
pub struct Value {
    pub pos: Pos,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone)]
pub enum Part {
    Lit(String),
    Var(Name),
}

impl Value {
    /// The text when it has no variable references.
    pub fn constant(&self) -> Option<String> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Var(_) => return None,
            }
        }
        Some(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Is,
    IsCase,
    Match,
    LessThan,
    GreaterThan,
    GreaterOrEqual,
    LessOrEqual,
    IpRange,
}

impl CmpOp {
    pub const ALL: [(CmpOp, &'static str); 8] = [
        (CmpOp::Is, "is"),
        (CmpOp::IsCase, "isCase"),
        (CmpOp::Match, "match"),
        (CmpOp::LessThan, "lessThan"),
        (CmpOp::GreaterThan, "greaterThan"),
        (CmpOp::GreaterOrEqual, "greaterOrEqual"),
        (CmpOp::LessOrEqual, "lessOrEqual"),
        (CmpOp::IpRange, "ipRange"),
    ];

    pub fn from_name(s: &str) -> Option<CmpOp> {
        Self::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(op, _)| *op)
    }

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(op, _)| *op == self).unwrap().1
    }
}

#[derive(Debug, Clone)]
pub struct Cond {
    pub pos: Pos,
    pub kind: CondKind,
}

#[derive(Debug, Clone)]
pub enum CondKind {
    Cmp {
        op: CmpOp,
        var: Name,
        value: Value,
    },
    Not(Box<Cond>),
    AllOf(Vec<Cond>),
    AnyOf(Vec<Cond>),
    /// Reported already; kept so checking can go on.
    Invalid,
}
