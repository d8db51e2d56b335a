//! A small, lossless PostgreSQL lexer and statement splitter.
//!
//! The migration runner has to know where statements begin and end (to report
//! line numbers and to run non-transactional statements one by one) and which
//! keywords they start with (to classify them), without ever misreading a `;`
//! or a keyword that sits inside a string, comment, quoted identifier or
//! dollar-quoted function body. This module does exactly that much lexing and
//! no parsing.
//!
//! Guarantees relied upon elsewhere: [`tokenize`] and [`split`] never panic on
//! any `&str`, and the concatenation of their pieces is the input, byte for
//! byte. Lexing follows PostgreSQL with `standard_conforming_strings = on`.

/// The lexical category of a [`Token`]; coarse on purpose, since only
/// statement boundaries and leading keywords matter to the callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A run of spaces, tabs, newlines, carriage returns, form or vertical feeds.
    Whitespace,
    /// `-- ...` up to (not including) the end of the line.
    LineComment,
    /// `/* ... */`, nesting as in PostgreSQL.
    BlockComment,
    /// `'...'`, `E'...'`, `U&'...'`, `B'...'`, `X'...'` or `N'...'`.
    StringLiteral,
    /// `$$...$$` or `$tag$...$tag$`.
    DollarString,
    /// `"..."` or `U&"..."`.
    QuotedIdent,
    /// An unquoted identifier or keyword.
    Word,
    /// A numeric literal (lexed loosely).
    Number,
    /// A positional parameter such as `$1`.
    Param,
    /// `;`
    Semicolon,
    /// Any other single character (operators, parentheses, commas, ...).
    Punct,
}

/// One lexical token: a slice of the input plus its kind and position, so the
/// input can be reconstructed and errors can point at the right line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// What kind of token this is.
    pub kind: TokenKind,
    /// The exact source text of the token.
    pub text: &'a str,
    /// Byte offset of the token in the input given to [`tokenize`]/[`split`].
    pub start: usize,
    /// `false` for a string, comment, dollar quote or quoted identifier that
    /// is still open at the end of the input.
    pub terminated: bool,
}

impl Token<'_> {
    /// Whether the token carries meaning (i.e. is not whitespace or a comment).
    fn is_significant(&self) -> bool {
        !matches!(
            self.kind,
            TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment
        )
    }

    /// Whether this is an unquoted word equal (ASCII case-insensitively) to `kw`.
    fn is_word(&self, kw: &str) -> bool {
        self.kind == TokenKind::Word && self.text.eq_ignore_ascii_case(kw)
    }
}

/// PostgreSQL whitespace: space, `\t`, `\n`, `\r`, `\f` and `\v`.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Identifier start: ASCII letter, `_`, or any non-ASCII byte (PostgreSQL
/// treats every high-bit byte as a letter).
fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// Identifier continuation: as [`is_ident_start`] plus digits and `$`.
fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Characters allowed inside a dollar-quote tag (no `$`).
fn is_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

/// Splits `sql` into tokens. Never panics; the token texts concatenate to `sql`.
///
/// All boundaries are placed right after an ASCII byte or at the end of the
/// input, and UTF-8 continuation bytes are never ASCII, so every slice is on a
/// character boundary.
pub fn tokenize(sql: &str) -> Vec<Token<'_>> {
    let bytes = sql.as_bytes();
    let len = bytes.len();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < len {
        let start = i;
        let (kind, end, terminated) = lex_one(bytes, i);
        // `lex_one` always makes progress; guard anyway so a bug cannot loop forever.
        let end = end.max(start + 1).min(len);
        let end = next_boundary(sql, end);
        i = end;
        tokens.push(Token {
            kind,
            text: &sql[start..end],
            start,
            terminated,
        });
    }
    tokens
}

/// Smallest char boundary of `s` at or after `i` (clamped to `s.len()`).
fn next_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

/// Largest char boundary of `s` at or before `i` (clamped to `s.len()`).
fn prev_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Lexes one token starting at `i` (which is `< bytes.len()`), returning its
/// kind, end offset and whether it is terminated.
fn lex_one(bytes: &[u8], i: usize) -> (TokenKind, usize, bool) {
    let len = bytes.len();
    let b = bytes[i];
    let peek = |k: usize| bytes.get(i + k).copied();
    if is_space(b) {
        let mut j = i + 1;
        while j < len && is_space(bytes[j]) {
            j += 1;
        }
        return (TokenKind::Whitespace, j, true);
    }
    if b == b'-' && peek(1) == Some(b'-') {
        let mut j = i + 2;
        while j < len && bytes[j] != b'\n' && bytes[j] != b'\r' {
            j += 1;
        }
        return (TokenKind::LineComment, j, true);
    }
    if b == b'/' && peek(1) == Some(b'*') {
        let (end, ok) = block_comment_end(bytes, i + 2);
        return (TokenKind::BlockComment, end, ok);
    }
    if b == b'\'' {
        let (end, ok) = quoted_end(bytes, i + 1, b'\'', false);
        return (TokenKind::StringLiteral, end, ok);
    }
    if b == b'"' {
        let (end, ok) = quoted_end(bytes, i + 1, b'"', false);
        return (TokenKind::QuotedIdent, end, ok);
    }
    if b == b'$' {
        return lex_dollar(bytes, i);
    }
    if is_ident_start(b) {
        let mut j = i + 1;
        while j < len && is_ident_cont(bytes[j]) {
            j += 1;
        }
        // Prefixed literals: only when the whole word is the prefix.
        if j == i + 1 {
            let next = bytes.get(j).copied();
            match (b.to_ascii_lowercase(), next) {
                (b'e', Some(b'\'')) => {
                    let (end, ok) = quoted_end(bytes, j + 1, b'\'', true);
                    return (TokenKind::StringLiteral, end, ok);
                }
                (b'b' | b'x' | b'n', Some(b'\'')) => {
                    let (end, ok) = quoted_end(bytes, j + 1, b'\'', false);
                    return (TokenKind::StringLiteral, end, ok);
                }
                (b'u', Some(b'&')) => match bytes.get(j + 1).copied() {
                    Some(b'\'') => {
                        let (end, ok) = quoted_end(bytes, j + 2, b'\'', false);
                        return (TokenKind::StringLiteral, end, ok);
                    }
                    Some(b'"') => {
                        let (end, ok) = quoted_end(bytes, j + 2, b'"', false);
                        return (TokenKind::QuotedIdent, end, ok);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        return (TokenKind::Word, j, true);
    }
    if b.is_ascii_digit() || (b == b'.' && peek(1).is_some_and(|c| c.is_ascii_digit())) {
        return (TokenKind::Number, number_end(bytes, i), true);
    }
    if b == b';' {
        return (TokenKind::Semicolon, i + 1, true);
    }
    // One character of punctuation. Non-ASCII bytes are identifier starts, so
    // this is always a single ASCII byte.
    (TokenKind::Punct, i + 1, true)
}

/// End of a (nesting) block comment whose body starts at `j`.
fn block_comment_end(bytes: &[u8], mut j: usize) -> (usize, bool) {
    let len = bytes.len();
    let mut depth = 1usize;
    while j < len {
        if bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return (j, true);
            }
        } else {
            j += 1;
        }
    }
    (len, false)
}

/// End of a quoted construct whose body starts at `j`, closed by `quote`
/// (a doubled quote is an escaped quote). With `backslash`, `\` escapes the
/// following byte (E'' strings).
fn quoted_end(bytes: &[u8], mut j: usize, quote: u8, backslash: bool) -> (usize, bool) {
    let len = bytes.len();
    while j < len {
        let c = bytes[j];
        if backslash && c == b'\\' {
            // Skipping one byte is enough: continuation bytes of a multi-byte
            // character are never a quote or a backslash.
            j += 2;
        } else if c == quote {
            if bytes.get(j + 1) == Some(&quote) {
                j += 2;
            } else {
                return (j + 1, true);
            }
        } else {
            j += 1;
        }
    }
    (len, false)
}

/// Lexes a token starting with `$`: a parameter, a dollar quote, or punctuation.
fn lex_dollar(bytes: &[u8], i: usize) -> (TokenKind, usize, bool) {
    let len = bytes.len();
    if bytes.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        let mut j = i + 1;
        while j < len && bytes[j].is_ascii_digit() {
            j += 1;
        }
        return (TokenKind::Param, j, true);
    }
    // Opening delimiter: `$` [tag] `$` with tag = ident start then tag chars.
    let mut j = i + 1;
    if j < len && is_ident_start(bytes[j]) {
        j += 1;
        while j < len && is_tag_cont(bytes[j]) {
            j += 1;
        }
    }
    if bytes.get(j) != Some(&b'$') {
        return (TokenKind::Punct, i + 1, true);
    }
    let delim = &bytes[i..=j];
    let body = j + 1;
    match find_bytes(&bytes[body..], delim) {
        Some(pos) => (TokenKind::DollarString, body + pos + delim.len(), true),
        None => (TokenKind::DollarString, len, false),
    }
}

/// Position of the first occurrence of `needle` in `hay`.
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// End of a numeric literal starting at `i` (loose: digits, letters, `_`,
/// one-dot decimals and signed exponents).
fn number_end(bytes: &[u8], i: usize) -> usize {
    let len = bytes.len();
    let hex_like = bytes[i] == b'0'
        && bytes
            .get(i + 1)
            .is_some_and(|c| matches!(c.to_ascii_lowercase(), b'x' | b'o' | b'b'));
    let mut j = i;
    while j < len {
        let c = bytes[j];
        if c.is_ascii_alphanumeric() || c == b'_' {
            j += 1;
        } else if c == b'.' {
            // `1..10` (a range) is not a number followed by `.10`.
            if bytes.get(j + 1) == Some(&b'.') {
                break;
            }
            j += 1;
        } else if (c == b'+' || c == b'-')
            && !hex_like
            && j > i
            && matches!(bytes[j - 1], b'e' | b'E')
            && bytes.get(j + 1).is_some_and(|d| d.is_ascii_digit())
        {
            j += 1;
        } else {
            break;
        }
    }
    j
}

/// One statement of a migration file: its exact text (including leading
/// whitespace/comments and the terminating `;`) and its tokens.
#[derive(Debug, Clone)]
pub struct Statement<'a> {
    /// The exact source text of this piece.
    pub text: &'a str,
    /// Byte offset of the piece in the input given to [`split`].
    pub start: usize,
    /// The piece's tokens, with offsets relative to the whole input.
    pub tokens: Vec<Token<'a>>,
}

impl<'a> Statement<'a> {
    /// True when the piece holds nothing to execute (only whitespace,
    /// comments and semicolons), so it can be skipped.
    pub fn is_empty(&self) -> bool {
        self.tokens
            .iter()
            .all(|t| !t.is_significant() || t.kind == TokenKind::Semicolon)
    }

    /// The first `n` significant tokens, uppercased, as long as they are
    /// unquoted words: stops at the first significant non-word token, so a
    /// quoted identifier or `(` ends the keyword prefix.
    pub fn keywords(&self, n: usize) -> Vec<String> {
        self.significant()
            .take_while(|t| t.kind == TokenKind::Word)
            .take(n)
            .map(|t| t.text.to_ascii_uppercase())
            .collect()
    }

    /// The tokens that carry meaning: everything but whitespace and comments,
    /// so keyword matching is not broken by comments between keywords.
    pub fn significant(&self) -> impl Iterator<Item = &Token<'a>> {
        self.tokens.iter().filter(|t| t.is_significant())
    }

    /// 1-based line in `source` (the text given to [`split`]) of the first
    /// significant token, or of the piece's start if there is none; this is
    /// the line to report for the statement.
    pub fn first_line(&self, source: &str) -> usize {
        let offset = self.significant().next().map_or(self.start, |t| t.start);
        line_col(source, offset).0
    }
}

/// Splits `sql` into statements at top-level semicolons. Never panics; the
/// pieces' texts concatenate to `sql`.
///
/// Each piece ends right after its `;`; whitespace and comments before a
/// statement belong to that statement, and whatever follows the last `;`
/// forms a final piece. Like psql, semicolons inside the SQL-standard body of
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC ... END` do not
/// split.
pub fn split(sql: &str) -> Vec<Statement<'_>> {
    let tokens = tokenize(sql);
    let mut out = Vec::new();
    let mut cur: Vec<Token<'_>> = Vec::new();
    let mut splitter = AtomicBodyTracker::default();
    for tok in tokens {
        cur.push(tok);
        if splitter.feed(&tok) {
            out.push(make_statement(sql, std::mem::take(&mut cur)));
            splitter = AtomicBodyTracker::default();
        }
    }
    if !cur.is_empty() {
        out.push(make_statement(sql, cur));
    }
    out
}

/// Builds a [`Statement`] from a non-empty, contiguous run of tokens.
fn make_statement<'a>(sql: &'a str, tokens: Vec<Token<'a>>) -> Statement<'a> {
    let start = tokens.first().map_or(sql.len(), |t| t.start);
    let end = tokens.last().map_or(start, |t| t.start + t.text.len());
    Statement {
        // Token boundaries are char boundaries, so this slice is valid.
        text: sql.get(start..end).unwrap_or(""),
        start,
        tokens,
    }
}

/// psql's heuristic for `BEGIN ATOMIC ... END` bodies, fed one token at a time.
#[derive(Default)]
struct AtomicBodyTracker {
    /// First significant tokens as uppercased words (`None` for non-words).
    prefix: Vec<Option<String>>,
    /// Whether the previous significant token was the word `BEGIN`.
    prev_begin: bool,
    /// Nesting of BEGIN/CASE ... END inside the body.
    depth: usize,
    /// Parenthesis nesting; psql only counts keywords at paren depth 0.
    parens: usize,
}

impl AtomicBodyTracker {
    /// Feeds one token; returns true when it ends the statement.
    fn feed(&mut self, tok: &Token<'_>) -> bool {
        if !tok.is_significant() {
            return false;
        }
        if tok.kind == TokenKind::Semicolon && self.depth == 0 {
            return true;
        }
        if self.prefix.len() < 4 {
            self.prefix
                .push((tok.kind == TokenKind::Word).then(|| tok.text.to_ascii_uppercase()));
        }
        let was_begin = std::mem::replace(&mut self.prev_begin, tok.is_word("BEGIN"));
        match tok.kind {
            TokenKind::Punct if tok.text == "(" => self.parens += 1,
            TokenKind::Punct if tok.text == ")" => self.parens = self.parens.saturating_sub(1),
            TokenKind::Word if self.parens == 0 && self.is_routine() => {
                if self.depth == 0 {
                    if was_begin && tok.is_word("ATOMIC") {
                        self.depth = 1;
                    }
                } else if tok.is_word("BEGIN") || tok.is_word("CASE") {
                    self.depth += 1;
                } else if tok.is_word("END") {
                    self.depth -= 1;
                }
            }
            _ => {}
        }
        false
    }

    /// Whether the statement starts `CREATE [OR REPLACE] FUNCTION|PROCEDURE`.
    fn is_routine(&self) -> bool {
        let w = |i: usize| self.prefix.get(i).and_then(|o| o.as_deref());
        let routine = |s: Option<&str>| matches!(s, Some("FUNCTION" | "PROCEDURE"));
        w(0) == Some("CREATE")
            && (routine(w(1)) || (w(1) == Some("OR") && w(2) == Some("REPLACE") && routine(w(3))))
    }
}

/// Decodes the value of a [`TokenKind::StringLiteral`] token; `None` for any
/// other token. Used to compare enum labels however they were spelled.
///
/// Handles `''` doubling, `E''` backslash escapes (`\b \f \n \r \t`, octal,
/// `\x` hex, `\u`/`\U` Unicode, anything else literal), `U&''` escapes
/// (`\XXXX`, `\+XXXXXX`, `\\`; a trailing `UESCAPE` clause is not seen, so
/// the escape character is always `\`), and `B''`/`X''`/`N''` prefixes (bit
/// and hex strings yield their digits). An unterminated literal decodes up to
/// the end of the input. Invalid escapes degrade to U+FFFD rather than fail.
pub fn string_literal_value(token: &Token) -> Option<String> {
    if token.kind != TokenKind::StringLiteral {
        return None;
    }
    let text = token.text;
    let quote = text.find('\'')?;
    let prefix = text[..quote].to_ascii_lowercase();
    let body_end = if token.terminated && text.len() > quote + 1 && text.ends_with('\'') {
        text.len() - 1
    } else {
        text.len()
    };
    let body = text.get(quote + 1..body_end)?;
    Some(match prefix.as_str() {
        "e" => decode_e(body),
        "u&" => decode_unicode_escapes(&body.replace("''", "'"), '\\'),
        _ => body.replace("''", "'"),
    })
}

/// Decodes the body of an `E'...'` string.
fn decode_e(body: &str) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                // `''` is one quote.
                if chars.peek() == Some(&'\'') {
                    chars.next();
                }
                out.push(b'\'');
            }
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push(b'\\');
                    break;
                };
                match e {
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            match chars.peek().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push((v & 0xff) as u8);
                    }
                    'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 {
                            match chars.peek().and_then(|d| d.to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    chars.next();
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            out.push(b'x');
                        } else {
                            out.push(v as u8);
                        }
                    }
                    'u' | 'U' => {
                        let digits = if e == 'u' { 4 } else { 8 };
                        match take_hex(&mut chars, digits) {
                            Some(v) => {
                                let v = combine_surrogates(v, &mut chars, '\\');
                                push_char(&mut out, v);
                            }
                            None => push_char(&mut out, 0xFFFD),
                        }
                    }
                    other => push_char(&mut out, other as u32),
                }
            }
            other => push_char(&mut out, other as u32),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `U&` escapes (`<esc>XXXX`, `<esc>+XXXXXX`, `<esc><esc>`).
fn decode_unicode_escapes(body: &str, esc: char) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c != esc {
            push_char(&mut out, c as u32);
            continue;
        }
        if chars.peek() == Some(&esc) {
            chars.next();
            push_char(&mut out, esc as u32);
            continue;
        }
        let v = if chars.peek() == Some(&'+') {
            chars.next();
            take_hex(&mut chars, 6)
        } else {
            take_hex(&mut chars, 4)
        };
        match v {
            Some(v) => {
                let v = combine_surrogates(v, &mut chars, esc);
                push_char(&mut out, v);
            }
            None => push_char(&mut out, 0xFFFD),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads exactly `n` hex digits, or returns `None` having consumed what matched.
fn take_hex(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, n: usize) -> Option<u32> {
    let mut v = 0u32;
    for _ in 0..n {
        let d = chars.peek().and_then(|c| c.to_digit(16))?;
        chars.next();
        v = v.wrapping_mul(16).wrapping_add(d);
    }
    Some(v)
}

/// If `hi` is a high surrogate followed by an escaped low surrogate
/// (`<esc>uXXXX` in E'' or `<esc>XXXX` in U&''), combines the pair.
fn combine_surrogates(
    hi: u32,
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    esc: char,
) -> u32 {
    if !(0xD800..0xDC00).contains(&hi) {
        return hi;
    }
    let mut look = chars.clone();
    if look.next() != Some(esc) {
        return hi;
    }
    if look.peek() == Some(&'u') {
        look.next();
    }
    match take_hex(&mut look, 4) {
        Some(lo) if (0xDC00..0xE000).contains(&lo) => {
            *chars = look;
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        }
        _ => hi,
    }
}

/// Appends the UTF-8 encoding of code point `v` (U+FFFD if invalid).
fn push_char(out: &mut Vec<u8>, v: u32) {
    let c = char::from_u32(v).unwrap_or('\u{FFFD}');
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// Decodes the text of a quoted identifier token (`"..."` or `U&"..."`),
/// without truncation; `None` if `text` is not one.
pub(crate) fn quoted_ident_value(text: &str) -> Option<String> {
    let (unicode, rest) = match text.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("u&") => (true, &text[2..]),
        _ => (false, text),
    };
    let inner = rest.strip_prefix('"')?;
    let inner = inner.strip_suffix('"').unwrap_or(inner);
    let value = inner.replace("\"\"", "\"");
    Some(if unicode {
        decode_unicode_escapes(&value, '\\')
    } else {
        value
    })
}

/// 1-based line and 1-based column (in characters) of `byte_offset` in
/// `source`, for error messages. Never panics: offsets past the end are
/// clamped and offsets inside a character are moved back to its start.
pub fn line_col(source: &str, byte_offset: usize) -> (usize, usize) {
    let off = prev_boundary(source, byte_offset);
    let before = &source[..off];
    let line = 1 + before.bytes().filter(|&b| b == b'\n').count();
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let col = 1 + before[line_start..].chars().count();
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(sql: &str) -> Vec<(TokenKind, &str)> {
        tokenize(sql).iter().map(|t| (t.kind, t.text)).collect()
    }

    fn sig(sql: &str) -> Vec<(TokenKind, &str)> {
        tokenize(sql)
            .into_iter()
            .filter(|t| t.is_significant())
            .map(|t| (t.kind, t.text))
            .collect()
    }

    fn texts<'a>(stmts: &[Statement<'a>]) -> Vec<&'a str> {
        stmts.iter().map(|s| s.text).collect()
    }

    fn assert_lossless(sql: &str) {
        let toks = tokenize(sql);
        let mut pos = 0;
        for t in &toks {
            assert_eq!(t.start, pos, "token offsets contiguous in {sql:?}");
            assert!(!t.text.is_empty());
            pos += t.text.len();
        }
        assert_eq!(pos, sql.len());
        let joined: String = toks.iter().map(|t| t.text).collect();
        assert_eq!(joined, sql);
        let stmts = split(sql);
        let mut pos = 0;
        for s in &stmts {
            assert_eq!(s.start, pos);
            assert!(!s.text.is_empty());
            let inner: String = s.tokens.iter().map(|t| t.text).collect();
            assert_eq!(inner, s.text);
            pos += s.text.len();
        }
        assert_eq!(pos, sql.len());
        let joined: String = stmts.iter().map(|s| s.text).collect();
        assert_eq!(joined, sql);
    }

    #[test]
    fn basic_tokens() {
        use TokenKind::*;
        assert_eq!(
            kinds("SELECT a1, 12.5e-3 FROM t;"),
            vec![
                (Word, "SELECT"),
                (Whitespace, " "),
                (Word, "a1"),
                (Punct, ","),
                (Whitespace, " "),
                (Number, "12.5e-3"),
                (Whitespace, " "),
                (Word, "FROM"),
                (Whitespace, " "),
                (Word, "t"),
                (Semicolon, ";"),
            ]
        );
        assert_eq!(
            sig("x::int 0x1F 1_000 .5 1..10"),
            vec![
                (Word, "x"),
                (Punct, ":"),
                (Punct, ":"),
                (Word, "int"),
                (Number, "0x1F"),
                (Number, "1_000"),
                (Number, ".5"),
                (Number, "1"),
                (Punct, "."),
                (Number, ".10"),
            ]
        );
        assert!(tokenize("").is_empty());
    }

    #[test]
    fn line_comments() {
        use TokenKind::*;
        assert_eq!(
            kinds("a -- c; d\nb"),
            vec![
                (Word, "a"),
                (Whitespace, " "),
                (LineComment, "-- c; d"),
                (Whitespace, "\n"),
                (Word, "b"),
            ]
        );
        assert_eq!(
            kinds("--x\r\n"),
            vec![(LineComment, "--x"), (Whitespace, "\r\n")]
        );
        assert_eq!(
            sig("a - -b"),
            vec![(Word, "a"), (Punct, "-"), (Punct, "-"), (Word, "b")]
        );
    }

    #[test]
    fn nested_block_comments() {
        use TokenKind::*;
        assert_eq!(
            kinds("/* a /* b; */ c */x"),
            vec![(BlockComment, "/* a /* b; */ c */"), (Word, "x")]
        );
        assert_eq!(kinds("/**/"), vec![(BlockComment, "/**/")]);
        assert_eq!(
            kinds("/* **/y"),
            vec![(BlockComment, "/* **/"), (Word, "y")]
        );
        // `/*/` does not close itself.
        let t = tokenize("/*/ x");
        assert_eq!(t.len(), 1);
        assert!(!t[0].terminated);
        // Only one close for two opens: unterminated.
        let t = tokenize("/* a /* b */ c");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].kind, BlockComment);
        assert!(!t[0].terminated);
    }

    #[test]
    fn standard_strings() {
        use TokenKind::*;
        assert_eq!(
            sig("'it''s; $$ --' x"),
            vec![(StringLiteral, "'it''s; $$ --'"), (Word, "x")]
        );
        // Backslash is literal in standard strings.
        assert_eq!(sig(r"'a\' x"), vec![(StringLiteral, r"'a\'"), (Word, "x")]);
        assert_eq!(sig("''"), vec![(StringLiteral, "''")]);
    }

    #[test]
    fn escape_strings() {
        use TokenKind::*;
        assert_eq!(
            sig(r"E'it\'s; \\' x"),
            vec![(StringLiteral, r"E'it\'s; \\'"), (Word, "x")]
        );
        assert_eq!(sig(r"e'a''b'"), vec![(StringLiteral, r"e'a''b'")]);
        // A prefix letter that is part of a longer word is not a prefix.
        assert_eq!(sig("somE'x'"), vec![(Word, "somE"), (StringLiteral, "'x'")]);
        assert_eq!(sig("E 'x'"), vec![(Word, "E"), (StringLiteral, "'x'")]);
    }

    #[test]
    fn prefixed_strings_and_idents() {
        use TokenKind::*;
        assert_eq!(
            sig(r#"U&'d\0061t' u&"x""y" B'101' X'1F' N'n' n"#),
            vec![
                (StringLiteral, r"U&'d\0061t'"),
                (QuotedIdent, r#"u&"x""y""#),
                (StringLiteral, "B'101'"),
                (StringLiteral, "X'1F'"),
                (StringLiteral, "N'n'"),
                (Word, "n"),
            ]
        );
        assert_eq!(
            sig("U & 'x'"),
            vec![(Word, "U"), (Punct, "&"), (StringLiteral, "'x'")]
        );
        assert_eq!(sig("U&x"), vec![(Word, "U"), (Punct, "&"), (Word, "x")]);
        assert_eq!(
            sig("U&'x' UESCAPE '!'"),
            vec![
                (StringLiteral, "U&'x'"),
                (Word, "UESCAPE"),
                (StringLiteral, "'!'")
            ]
        );
    }

    #[test]
    fn quoted_identifiers() {
        use TokenKind::*;
        assert_eq!(
            sig(r#""a""b;c" "x'y""#),
            vec![(QuotedIdent, r#""a""b;c""#), (QuotedIdent, r#""x'y""#)]
        );
        assert_eq!(quoted_ident_value(r#""a""b""#).as_deref(), Some(r#"a"b"#));
        assert_eq!(quoted_ident_value(r#"U&"d\0061t""#).as_deref(), Some("dat"));
        assert_eq!(quoted_ident_value("abc"), None);
    }

    #[test]
    fn dollar_quotes() {
        use TokenKind::*;
        assert_eq!(
            sig("DO $$ BEGIN; 'x $$ y"),
            vec![(Word, "DO"), (DollarString, "$$ BEGIN; 'x $$"), (Word, "y")]
        );
        assert_eq!(
            sig("$fn$ a $$ b; $x$ $fn$;"),
            vec![(DollarString, "$fn$ a $$ b; $x$ $fn$"), (Semicolon, ";")]
        );
        assert_eq!(
            sig("$a_1$x$a_1$ $ä$y$ä$"),
            vec![(DollarString, "$a_1$x$a_1$"), (DollarString, "$ä$y$ä$")]
        );
        // Tags are case-sensitive.
        let t = tokenize("$A$ x $a$");
        assert_eq!(t.len(), 1);
        assert!(!t[0].terminated);
    }

    #[test]
    fn params_are_not_dollar_quotes() {
        use TokenKind::*;
        assert_eq!(
            sig("SELECT $1, $23$$x$$"),
            vec![
                (Word, "SELECT"),
                (Param, "$1"),
                (Punct, ","),
                (Param, "$23"),
                (DollarString, "$$x$$"),
            ]
        );
        assert_eq!(sig("$1$"), vec![(Param, "$1"), (Punct, "$")]);
        // `$1a$` is not a tag (tags cannot start with a digit).
        assert_eq!(sig("$$1$$"), vec![(DollarString, "$$1$$")]);
        assert_eq!(sig("a $ b"), vec![(Word, "a"), (Punct, "$"), (Word, "b")]);
    }

    #[test]
    fn dollar_inside_string_and_identifier() {
        use TokenKind::*;
        assert_eq!(sig("'$$' x"), vec![(StringLiteral, "'$$'"), (Word, "x")]);
        // Identifiers may contain `$` after the first char; `a$b$` is a word.
        assert_eq!(
            sig("a$b$ c;"),
            vec![(Word, "a$b$"), (Word, "c"), (Semicolon, ";")]
        );
        assert_eq!(sig("x$$y"), vec![(Word, "x$$y")]);
        assert_eq!(
            sig("\"q\"$$z$$"),
            vec![(QuotedIdent, "\"q\""), (DollarString, "$$z$$")]
        );
    }

    #[test]
    fn unterminated_constructs() {
        for (sql, kind) in [
            ("'abc", TokenKind::StringLiteral),
            ("E'ab\\'", TokenKind::StringLiteral),
            ("E'ab\\", TokenKind::StringLiteral),
            ("U&'x", TokenKind::StringLiteral),
            ("\"abc", TokenKind::QuotedIdent),
            ("U&\"abc", TokenKind::QuotedIdent),
            ("$$abc", TokenKind::DollarString),
            ("$t$abc$t", TokenKind::DollarString),
            ("/* abc", TokenKind::BlockComment),
        ] {
            let t = tokenize(sql);
            assert_eq!(t.len(), 1, "{sql:?}");
            assert_eq!(t[0].kind, kind, "{sql:?}");
            assert!(!t[0].terminated, "{sql:?}");
            assert_eq!(t[0].text, sql);
        }
        assert!(tokenize("'a'").iter().all(|t| t.terminated));
        assert!(tokenize("-- no newline").iter().all(|t| t.terminated));
    }

    #[test]
    fn multibyte_utf8() {
        use TokenKind::*;
        assert_eq!(
            sig("SELECT 'héllo', \"naïve\", café, €; -- ü"),
            vec![
                (Word, "SELECT"),
                (StringLiteral, "'héllo'"),
                (Punct, ","),
                (QuotedIdent, "\"naïve\""),
                (Punct, ","),
                (Word, "café"),
                (Punct, ","),
                (Word, "€"),
                (Semicolon, ";"),
            ]
        );
        for sql in [
            "é",
            "E'\\é'",
            "'😀",
            "$😀$x$😀$",
            "/*😀",
            "1é",
            "\\é",
            "日本語;'日",
        ] {
            assert_lossless(sql);
        }
    }

    #[test]
    fn string_values() {
        let v = |sql: &str| {
            let toks = tokenize(sql);
            string_literal_value(&toks[0])
        };
        assert_eq!(v("'it''s'").as_deref(), Some("it's"));
        assert_eq!(v(r"'a\nb'").as_deref(), Some(r"a\nb"));
        assert_eq!(v(r"E'a\nb\tc\\d\'e''f'").as_deref(), Some("a\nb\tc\\d'e'f"));
        assert_eq!(
            v(r"E'\x41\101\u00e9\U0001F600\q'").as_deref(),
            Some("AAé😀q")
        );
        assert_eq!(v(r"E'\303\251'").as_deref(), Some("é"));
        assert_eq!(v(r"E'\uD83D\uDE00'").as_deref(), Some("😀"));
        assert_eq!(v(r"U&'d\0061t\+000061\\'").as_deref(), Some("data\\"));
        assert_eq!(v(r"U&'\D83D\DE00'").as_deref(), Some("😀"));
        assert_eq!(v("B'101'").as_deref(), Some("101"));
        assert_eq!(v("X'1F'").as_deref(), Some("1F"));
        assert_eq!(v("N'ADMIN'").as_deref(), Some("ADMIN"));
        assert_eq!(v("'ADMIN").as_deref(), Some("ADMIN"));
        assert_eq!(v("''").as_deref(), Some(""));
        assert_eq!(v("'").as_deref(), Some(""));
        assert_eq!(v("E'\\").as_deref(), Some("\\"));
        assert_eq!(v("ADMIN"), None);
        assert_eq!(v("\"ADMIN\""), None);
        assert_eq!(v("$$ADMIN$$"), None);
    }

    #[test]
    fn line_col_positions() {
        let s = "ab\ncé\nx";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 2), (1, 3));
        assert_eq!(line_col(s, 3), (2, 1));
        assert_eq!(line_col(s, 4), (2, 2));
        // Inside `é` (bytes 4..6): moved back to its start.
        assert_eq!(line_col(s, 5), (2, 2));
        assert_eq!(line_col(s, 6), (2, 3));
        assert_eq!(line_col(s, 7), (3, 1));
        assert_eq!(line_col(s, 8), (3, 2));
        assert_eq!(line_col(s, 1000), (3, 2));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn split_basic() {
        let sql = "CREATE TABLE a (x int);\n-- note\nINSERT INTO a VALUES (1);";
        let s = split(sql);
        assert_eq!(
            texts(&s),
            vec![
                "CREATE TABLE a (x int);",
                "\n-- note\nINSERT INTO a VALUES (1);"
            ]
        );
        assert_eq!(s[1].first_line(sql), 3);
        assert_eq!(s[1].keywords(2), vec!["INSERT", "INTO"]);
        assert_eq!(s[0].first_line(sql), 1);
        assert!(split("").is_empty());
        assert_lossless(sql);
    }

    #[test]
    fn split_without_trailing_semicolon_or_newline() {
        let s = split("SELECT 1;\nSELECT 2");
        assert_eq!(texts(&s), vec!["SELECT 1;", "\nSELECT 2"]);
        assert!(!s[1].is_empty());
    }

    #[test]
    fn split_trailing_comment() {
        let sql = "DROP INDEX x; -- covered by y\n";
        let s = split(sql);
        assert_eq!(texts(&s), vec!["DROP INDEX x;", " -- covered by y\n"]);
        assert!(s[1].is_empty());
        assert!(!s[0].is_empty());
        assert_eq!(s[1].first_line(sql), 1);
        assert!(s[1].keywords(3).is_empty());
    }

    #[test]
    fn split_ignores_semicolons_in_literals() {
        let sql = "SELECT ';', \"a;b\", $$;$$, $t$;$t$ /* ; */ -- ;\n, E'\\';';\nSELECT 2;";
        let s = split(sql);
        assert_eq!(s.len(), 2, "{:?}", texts(&s));
        assert_eq!(s[1].text, "\nSELECT 2;");
    }

    #[test]
    fn split_empty_statements() {
        let s = split(";;  ;");
        assert_eq!(texts(&s), vec![";", ";", "  ;"]);
        assert!(s.iter().all(|s| s.is_empty()));
        let s = split("  \n ");
        assert_eq!(s.len(), 1);
        assert!(s[0].is_empty());
        assert_eq!(s[0].first_line("  \n "), 1);
    }

    #[test]
    fn keywords_stop_at_non_words() {
        let s = &split("CREATE /* c */ UNIQUE\n INDEX CONCURRENTLY \"x\" ON t (a);")[0];
        assert_eq!(
            s.keywords(10),
            vec!["CREATE", "UNIQUE", "INDEX", "CONCURRENTLY"]
        );
        assert_eq!(s.keywords(2), vec!["CREATE", "UNIQUE"]);
        let s = &split("reindex (verbose) index concurrently x")[0];
        assert_eq!(s.keywords(5), vec!["REINDEX"]);
        assert_eq!(s.significant().count(), 7);
    }

    #[test]
    fn split_begin_atomic_function() {
        let sql = "CREATE FUNCTION f(a int) RETURNS int LANGUAGE sql\n\
                   BEGIN ATOMIC\n  SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END;\n  SELECT 3;\nEND;\n\
                   CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;\n\
                   SELECT 1;";
        let s = split(sql);
        assert_eq!(s.len(), 3, "{:?}", texts(&s));
        assert!(s[0].text.ends_with("SELECT 3;\nEND;"));
        assert!(s[1]
            .text
            .trim_start()
            .starts_with("CREATE OR REPLACE PROCEDURE"));
        assert!(s[1].text.ends_with("END;"));
        assert_eq!(s[2].text, "\nSELECT 1;");
        assert_lossless(sql);
    }

    #[test]
    fn begin_outside_routines_still_splits() {
        // Not a CREATE FUNCTION: BEGIN is a transaction statement.
        let s = split("BEGIN; SELECT 1; COMMIT;");
        assert_eq!(s.len(), 3);
        // CREATE TRIGGER ... EXECUTE FUNCTION is not a routine definition.
        let s = split("CREATE TRIGGER t BEFORE INSERT ON x EXECUTE FUNCTION f(); BEGIN; END;");
        assert_eq!(s.len(), 3);
        // A plpgsql body in a dollar quote has no top-level BEGIN.
        let s = split(
            "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN RETURN NEW; END; $$ LANGUAGE plpgsql; SELECT 1;",
        );
        assert_eq!(s.len(), 2);
        // BEGIN not followed by ATOMIC does not open a body.
        let s = split("CREATE FUNCTION f() BEGIN; SELECT 1;");
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn split_prisma_do_blocks() {
        let sql = "-- CreateEnum\nDO $$ BEGIN\n CREATE TYPE \"Role\" AS ENUM ('A', 'B');\n\
                   EXCEPTION\n WHEN duplicate_object THEN null;\nEND $$;\n\n\
                   -- AddForeignKey\nALTER TABLE \"x\" ADD CONSTRAINT \"x_fkey\" FOREIGN KEY (\"y\") REFERENCES \"y\"(\"id\") ON DELETE CASCADE ON UPDATE CASCADE;\n";
        let s = split(sql);
        assert_eq!(s.len(), 3, "{:?}", texts(&s));
        assert_eq!(s[0].keywords(1), vec!["DO"]);
        assert_eq!(s[0].first_line(sql), 2);
        assert_eq!(s[1].keywords(2), vec!["ALTER", "TABLE"]);
        assert_eq!(s[1].first_line(sql), 9);
        assert!(s[2].is_empty());
        assert_lossless(sql);
    }

    /// SQL-ish fragments that exercise every lexer state transition.
    fn fragment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "'",
            "''",
            "\"",
            "$$",
            "$a$",
            "$1",
            "$",
            "/*",
            "*/",
            "--",
            ";",
            "E'",
            "e'",
            "U&'",
            "U&\"",
            "B'",
            "\\",
            "\n",
            "\r\n",
            " ",
            "é",
            "😀",
            "日",
            "a",
            "E",
            "x",
            "(",
            ")",
            "1",
            ".",
            "BEGIN",
            " ATOMIC ",
            "END",
            "CASE",
            "CREATE FUNCTION f() ",
            "CREATE OR REPLACE PROCEDURE ",
            "SELECT ",
            "-",
            "*",
            "/",
            "&",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_strings_are_lossless(s in any::<String>()) {
            assert_lossless(&s);
        }

        #[test]
        fn sqlish_strings_are_lossless(parts in prop::collection::vec(fragment(), 0..40)) {
            let s: String = parts.concat();
            assert_lossless(&s);
            for t in tokenize(&s) {
                let _ = string_literal_value(&t);
            }
        }

        #[test]
        fn line_col_never_panics(s in any::<String>(), frac in 0.0f64..=1.0) {
            let mut off = (s.len() as f64 * frac) as usize;
            while !s.is_char_boundary(off) {
                off -= 1;
            }
            let (line, col) = line_col(&s, off);
            prop_assert!(line >= 1 && col >= 1);
            prop_assert_eq!(line, 1 + s[..off].matches('\n').count());
            for stmt in split(&s) {
                let _ = stmt.first_line(&s);
            }
        }
    }
}
