//! Tokens of the Axigen policy language, each with its 1-based line and
//! column (columns count characters; a tab is one column).

use super::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// Identifier or keyword: letters, digits, `_` (and `.` inside, for
    /// `filterName.result` variables).
    Ident(String),
    /// A string literal's content, escapes (`\"`, `\\`) resolved. The
    /// positions of its characters are in [`Token::chars`].
    Str(String),
    /// A bare integer (adopted: numbers are normally written as strings).
    Int(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Semi,
    Eof,
}

impl Tok {
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Int(s) => format!("number {s}"),
            Tok::LParen => "`(`".to_string(),
            Tok::RParen => "`)`".to_string(),
            Tok::LBrace => "`{`".to_string(),
            Tok::RBrace => "`}`".to_string(),
            Tok::Comma => "`,`".to_string(),
            Tok::Semi => "`;`".to_string(),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
    /// For strings: the source position of each content character (so a
    /// `%var%` inside a multi-line literal is reported where it is).
    pub chars: Vec<Pos>,
}

/// A lexical error: position and message.
pub type LexError = (Pos, String);

pub fn lex(text: &str) -> (Vec<Token>, Vec<LexError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut col) = (0usize, 1u32, 1u32);
    // Advance over chars[i], keeping line/col right (CRLF is one line end).
    macro_rules! bump {
        () => {{
            let c = chars[i];
            i += 1;
            if c == '\n' {
                line += 1;
                col = 1;
            } else if c == '\r' {
                if chars.get(i) != Some(&'\n') {
                    line += 1;
                    col = 1;
                }
            } else {
                col += 1;
            }
            c
        }};
    }
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, col };
        if c.is_whitespace() || c == '\u{feff}' {
            bump!();
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' && chars[i] != '\r' {
                bump!();
            }
            continue;
        }
        let simple = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ',' => Some(Tok::Comma),
            ';' => Some(Tok::Semi),
            _ => None,
        };
        if let Some(tok) = simple {
            bump!();
            out.push(Token {
                tok,
                pos,
                chars: Vec::new(),
            });
            continue;
        }
        if c == '"' {
            bump!();
            let mut s = String::new();
            let mut at = Vec::new();
            let mut closed = false;
            while i < chars.len() {
                let here = Pos { line, col };
                let c = chars[i];
                if c == '"' {
                    bump!();
                    closed = true;
                    break;
                }
                if c == '\\' && matches!(chars.get(i + 1), Some('"') | Some('\\')) {
                    bump!();
                    s.push(bump!());
                    at.push(here);
                    continue;
                }
                s.push(bump!());
                at.push(here);
            }
            if !closed {
                errors.push((
                    pos,
                    "unterminated string (missing closing `\"`)".to_string(),
                ));
            }
            out.push(Token {
                tok: Tok::Str(s),
                pos,
                chars: at,
            });
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut s = String::new();
            s.push(bump!());
            while i < chars.len() && chars[i].is_ascii_digit() {
                s.push(bump!());
            }
            out.push(Token {
                tok: Tok::Int(s),
                pos,
                chars: Vec::new(),
            });
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let mut s = String::new();
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                s.push(bump!());
            }
            out.push(Token {
                tok: Tok::Ident(s),
                pos,
                chars: Vec::new(),
            });
            continue;
        }
        bump!();
        errors.push((pos, format!("unexpected character {c:?}")));
    }
    out.push(Token {
        tok: Tok::Eof,
        pos: Pos { line, col },
        chars: Vec::new(),
    });
    (out, errors)
}
