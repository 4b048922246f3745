//! Whether a statement sent as a read can write or take locks, judged from
//! its text alone (pure; no server, no parser).
//!
//! [`intent`] scans the SQL once, left to right, skipping what cannot hold a
//! keyword: string literals (`'…'` with `''`, `E'…'` with backslash escapes,
//! `$tag$…$tag$`), quoted identifiers (`"…"`) and comments (`--`, nested
//! `/* … */`). Keywords match whole words, in any case. A statement is a
//! read only when it starts with `SELECT`, `VALUES`, `TABLE`, `SHOW`,
//! `EXPLAIN`, `WITH` (or `(` before one of them), or is `COPY … TO`, and
//! nothing in it writes or locks:
//!
//! - `INSERT`, `UPDATE`, `DELETE`, `MERGE` anywhere (a data-modifying CTE,
//!   `FOR UPDATE`, `FOR NO KEY UPDATE`, an explained write), `INTO`
//!   (`SELECT … INTO` creates a table), `SHARE` after `FOR` or `KEY`
//!   (`FOR SHARE`, `FOR KEY SHARE`);
//! - a call of a built-in function that writes or locks: `nextval`,
//!   `setval`, the advisory-lock family, `pg_notify`, transaction-id
//!   assignment, large-object writes.
//!
//! Every other leading keyword (`INSERT`, `CALL`, `LOCK`, DDL, `DO`, `SET`,
//! `VACUUM`, one the scanner does not know) counts as a write: sending a
//! read to the primary costs a little distance, sending a write to a
//! replica fails. The rule errs the same way inside a read: a column
//! named like one of the words above (`SELECT t.update …`) sends it to the
//! primary too. What it cannot see is a user-defined function that writes
//! (`SELECT my_func()`): that is the caller's to mark, with
//! [`DatabaseManager::write`](crate::DatabaseManager::write).
//!
//! The cost is one pass over the bytes (a `SELECT 1` is eight bytes, ~190
//! instructions; a 40-byte point query ~900). A service sends the same few
//! statements again and again, so the answer for a text seen lately on the
//! thread is remembered (64 texts of up to 1 KiB each a thread, by the
//! text's hash, the text compared whole on a hit): a statement seen before
//! costs a hash and a comparison. A text new to its slot is copied into the
//! slot's buffer, which allocates only while that buffer grows.

use std::cell::RefCell;
use std::hash::Hasher;

use rustc_hash::FxHasher;

/// What a statement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Reads only: a replica may serve it.
    Read,
    /// May write or take locks: the primary must serve it. The word that
    /// says so (upper case for a keyword, the function's own name), or
    /// `"statement"` for a leading keyword that is not a known one.
    Write(&'static str),
}

/// What `sql` may do; see the module docs for the rules (and for the
/// statements remembered on each thread).
pub(crate) fn intent(sql: &str) -> Intent {
    let sql = sql.as_bytes();
    if sql.len() > REMEMBERED_LEN {
        return scan(sql);
    }
    let mut hasher = FxHasher::default();
    hasher.write(sql);
    let hash = hasher.finish();
    SEEN.try_with(|seen| seen.borrow_mut().intent(sql, hash))
        // The thread is ending: nothing to remember in.
        .unwrap_or_else(|_| scan(sql))
}

/// Texts longer than this are scanned every time, never remembered.
const REMEMBERED_LEN: usize = 1024;

/// Texts remembered a thread.
const SLOTS: usize = 64;

std::thread_local! {
    /// The statements scanned lately on this thread.
    static SEEN: RefCell<Seen> = const { RefCell::new(Seen::EMPTY) };
}

/// Statements scanned lately, each in the slot its hash picks (a newer
/// text takes the slot).
struct Seen {
    slots: [Slot; SLOTS],
}

struct Slot {
    hash: u64,
    /// The whole text (empty: an unused slot, or the empty statement,
    /// whose intent is `Read` either way).
    text: Vec<u8>,
    intent: Intent,
}

impl Seen {
    const EMPTY: Seen = {
        const UNUSED: Slot = Slot {
            hash: 0,
            text: Vec::new(),
            intent: Intent::Read,
        };
        Seen {
            slots: [UNUSED; SLOTS],
        }
    };

    /// The intent of `sql`, whose hash is `hash`: remembered, or scanned
    /// and remembered.
    fn intent(&mut self, sql: &[u8], hash: u64) -> Intent {
        // The hash's top bits pick the slot (FxHash mixes them best).
        let slot = &mut self.slots[(hash >> (64 - SLOTS.trailing_zeros())) as usize];
        if slot.hash == hash && slot.text == sql {
            return slot.intent;
        }
        let intent = scan(sql);
        slot.hash = hash;
        slot.text.clear();
        slot.text.extend_from_slice(sql);
        slot.intent = intent;
        intent
    }
}

/// [`intent`] without the memory: one pass over `sql`.
fn scan(sql: &[u8]) -> Intent {
    let tokens = Lexer { sql, at: 0 };
    let mut scan = Scan::default();
    for token in tokens {
        if let Some(why) = scan.step(token) {
            return Intent::Write(why);
        }
    }
    Intent::Read
}

/// Where the scan is within the statement.
#[derive(Default)]
struct Scan {
    /// A statement's first word was seen (false at the start and after
    /// `;`: the next word is a first word).
    inside: bool,
    /// Just after `EXPLAIN` (and its legacy options): the explained
    /// statement's first word comes next.
    explain: bool,
    /// Inside `COPY` before its direction: `FROM` at depth 0 writes, `TO`
    /// reads.
    copy: bool,
    /// Parentheses open now.
    depth: u32,
    /// `EXPLAIN ( … )`'s option list is open at this depth.
    options: Option<u32>,
    /// The previous word was `FOR` or `KEY` (before `SHARE`).
    lock_clause: bool,
}

impl Scan {
    /// Takes one token; says why the statement writes, if this shows it.
    #[inline]
    fn step(&mut self, token: Token<'_>) -> Option<&'static str> {
        match token {
            Token::Word(_) if self.options.is_some() => {}
            Token::Word(word) if !self.inside || self.explain => return self.lead(word),
            Token::Word(word) => return self.inner(word),
            Token::Open => {
                self.depth += 1;
                if self.explain && self.options.is_none() {
                    self.options = Some(self.depth);
                }
            }
            Token::Close => {
                if self.options == Some(self.depth) {
                    // The explained statement's first word comes next.
                    self.options = None;
                }
                self.depth = self.depth.saturating_sub(1);
            }
            Token::End => *self = Scan::default(),
            Token::Quoted(name) => return named_function(name, false),
            Token::Other => self.lock_clause = false,
        }
        None
    }

    /// The statement's first word (or the explained statement's).
    fn lead(&mut self, word: Word<'_>) -> Option<&'static str> {
        let explaining = std::mem::take(&mut self.explain);
        self.inside = true;
        match word.packed {
            SELECT | VALUES | TABLE | SHOW | WITH => None,
            ANALYZE | ANALYSE | VERBOSE if explaining => {
                self.explain = true;
                None
            }
            EXPLAIN if !explaining => {
                self.explain = true;
                None
            }
            COPY if !explaining => {
                self.copy = true;
                None
            }
            _ => Some(leading_name(word.text)),
        }
    }

    /// A word inside a statement that reads so far.
    #[inline]
    fn inner(&mut self, word: Word<'_>) -> Option<&'static str> {
        let after_lock_word = std::mem::take(&mut self.lock_clause);
        match word.packed {
            FROM if self.copy && self.depth == 0 => return Some("COPY"),
            TO if self.copy && self.depth == 0 => self.copy = false,
            FOR | KEY => self.lock_clause = true,
            SHARE if after_lock_word => return Some("SHARE"),
            INTO => return Some("INTO"),
            MERGE => return Some("MERGE"),
            INSERT => return Some("INSERT"),
            UPDATE => return Some("UPDATE"),
            DELETE => return Some("DELETE"),
            NEXTVAL => return Some("nextval"),
            SETVAL => return Some("setval"),
            LO_CREAT => return Some("lo_creat"),
            LO_PUT => return Some("lo_put"),
            // Longer than eight bytes: maybe one of the longer names.
            0 => return long_function(word.text),
            _ => {}
        }
        None
    }
}

/// A word and its [`pack`]ed form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word<'a> {
    text: &'a [u8],
    packed: u64,
}

/// Up to eight bytes of a word, ASCII letters folded to lower case, in one
/// integer: a keyword compares in one instruction. Longer words are 0,
/// which no keyword is. (Folding sets bit 5 of every byte: a digit, `_` or
/// `$` stays unlike any letter, and no byte becomes 0.)
#[inline]
const fn pack(word: &[u8]) -> u64 {
    if word.len() > 8 {
        return 0;
    }
    let mut packed = 0u64;
    let mut index = 0;
    while index < word.len() {
        packed |= ((word[index] | 0x20) as u64) << (8 * index);
        index += 1;
    }
    packed
}

const SELECT: u64 = pack(b"SELECT");
const VALUES: u64 = pack(b"VALUES");
const TABLE: u64 = pack(b"TABLE");
const SHOW: u64 = pack(b"SHOW");
const WITH: u64 = pack(b"WITH");
const EXPLAIN: u64 = pack(b"EXPLAIN");
const ANALYZE: u64 = pack(b"ANALYZE");
const ANALYSE: u64 = pack(b"ANALYSE");
const VERBOSE: u64 = pack(b"VERBOSE");
const COPY: u64 = pack(b"COPY");
const FROM: u64 = pack(b"FROM");
const TO: u64 = pack(b"TO");
const FOR: u64 = pack(b"FOR");
const KEY: u64 = pack(b"KEY");
const SHARE: u64 = pack(b"SHARE");
const INTO: u64 = pack(b"INTO");
const MERGE: u64 = pack(b"MERGE");
const INSERT: u64 = pack(b"INSERT");
const UPDATE: u64 = pack(b"UPDATE");
const DELETE: u64 = pack(b"DELETE");
const NEXTVAL: u64 = pack(b"nextval");
const SETVAL: u64 = pack(b"setval");
const LO_CREAT: u64 = pack(b"lo_creat");
const LO_PUT: u64 = pack(b"lo_put");

/// [`pack`] of the `len` bytes at `start` of `sql`, with one load when
/// eight bytes are there to read.
#[inline]
fn pack_at(sql: &[u8], start: usize, len: usize) -> u64 {
    if len > 8 {
        return 0;
    }
    match sql.get(start..start + 8) {
        Some(&[a, b, c, d, e, f, g, h]) => {
            let raw = u64::from_le_bytes([a, b, c, d, e, f, g, h]);
            let mask = u64::MAX >> (64 - 8 * len);
            (raw | 0x2020_2020_2020_2020) & mask
        }
        _ => pack(sql.get(start..start + len).unwrap_or_default()),
    }
}

/// A leading keyword that is not a read, named for logs and metrics (a
/// fixed set, so a metric label stays bounded).
fn leading_name(word: &[u8]) -> &'static str {
    const KNOWN: [&str; 30] = [
        "INSERT", "UPDATE", "DELETE", "MERGE", "CALL", "COPY", "LOCK", "CREATE", "ALTER", "DROP",
        "TRUNCATE", "GRANT", "REVOKE", "COMMENT", "REFRESH", "REINDEX", "CLUSTER", "VACUUM",
        "ANALYZE", "DO", "SET", "RESET", "LISTEN", "NOTIFY", "BEGIN", "START", "COMMIT", "PREPARE",
        "EXECUTE", "DECLARE",
    ];
    KNOWN
        .into_iter()
        .find(|known| word.eq_ignore_ascii_case(known.as_bytes()))
        .unwrap_or("statement")
}

/// Built-in functions that write, lock, or need a transaction id: none
/// runs on a server in recovery (or, for advisory locks, means anything
/// there).
const WRITING_FUNCTIONS: [&str; 11] = [
    "nextval",
    "setval",
    "pg_notify",
    "txid_current",
    "pg_current_xact_id",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_unlink",
    "lo_put",
    "lo_from_bytea",
];

/// A bare word longer than eight bytes that names a writing built-in.
#[inline]
fn long_function(word: &[u8]) -> Option<&'static str> {
    // Every longer name starts with one of these: most words stop here.
    match word.first() {
        Some(b'p' | b't' | b'l' | b'P' | b'T' | b'L') => named_function(word, true),
        _ => None,
    }
}

/// The name of a writing built-in `word` is, if it is one. Bare words match
/// in any case; a quoted identifier only exactly (`"nextval"` is the
/// function, `"NEXTVAL"` is not).
#[cold]
fn named_function(word: &[u8], bare: bool) -> Option<&'static str> {
    let same = |name: &[u8]| match bare {
        true => word.eq_ignore_ascii_case(name),
        false => word == name,
    };
    let starts = |prefix: &[u8]| {
        word.len() > prefix.len()
            && match bare {
                true => word[..prefix.len()].eq_ignore_ascii_case(prefix),
                false => word.starts_with(prefix),
            }
    };
    if starts(b"pg_advisory_") || starts(b"pg_try_advisory_") {
        return Some("pg_advisory_lock");
    }
    WRITING_FUNCTIONS
        .into_iter()
        .find(|name| same(name.as_bytes()))
}

/// What the scanner sees: words and the punctuation that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted identifier or keyword.
    Word(Word<'a>),
    /// A quoted identifier's text (doubled quotes left as they are).
    Quoted(&'a [u8]),
    Open,
    Close,
    /// `;`: the next word starts another statement.
    End,
    /// Anything else: a number, a literal, an operator, a parameter.
    Other,
}

/// What a byte may start, for the lexer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Space,
    /// A letter, `_` or any non-ASCII byte (identifiers take letters of
    /// every script).
    Letter,
    Digit,
    /// `$`: a parameter or a dollar quote (inside a word: part of it).
    Dollar,
    Quote,
    DoubleQuote,
    Dash,
    Slash,
    Open,
    Close,
    Semicolon,
    Other,
}

/// Every byte's [`Class`].
const CLASSES: [Class; 256] = {
    let mut table = [Class::Other; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = match b {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => Class::Space,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | 0x80..=0xff => Class::Letter,
            b'0'..=b'9' => Class::Digit,
            b'$' => Class::Dollar,
            b'\'' => Class::Quote,
            b'"' => Class::DoubleQuote,
            b'-' => Class::Dash,
            b'/' => Class::Slash,
            b'(' => Class::Open,
            b')' => Class::Close,
            b';' => Class::Semicolon,
            _ => Class::Other,
        };
        byte += 1;
    }
    table
};

fn class(byte: u8) -> Class {
    CLASSES[usize::from(byte)]
}

/// Splits SQL into [`Token`]s, skipping whitespace and comments.
struct Lexer<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    #[inline]
    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let byte = *self.sql.get(self.at)?;
            self.at += 1;
            return Some(match class(byte) {
                Class::Space => continue,
                Class::Letter => self.word(),
                Class::Digit => {
                    // A number, with any letters glued to it (`1e5`).
                    self.skip_while(|b| {
                        matches!(class(b), Class::Letter | Class::Digit) || b == b'.'
                    });
                    Token::Other
                }
                Class::Open => Token::Open,
                Class::Close => Token::Close,
                Class::Semicolon => Token::End,
                Class::Dash if self.sql.get(self.at) == Some(&b'-') => {
                    self.line_comment();
                    continue;
                }
                Class::Slash if self.sql.get(self.at) == Some(&b'*') => {
                    self.block_comment();
                    continue;
                }
                Class::Quote => {
                    self.string(false);
                    Token::Other
                }
                Class::DoubleQuote => Token::Quoted(self.quoted()),
                Class::Dollar => {
                    self.dollar();
                    Token::Other
                }
                Class::Dash | Class::Slash | Class::Other => Token::Other,
            });
        }
    }
}

impl<'a> Lexer<'a> {
    #[inline]
    fn skip_while(&mut self, keep: impl Fn(u8) -> bool) {
        while self.sql.get(self.at).is_some_and(|&b| keep(b)) {
            self.at += 1;
        }
    }

    /// A word starting one byte back; `E'…'` is a string, not a word.
    #[inline]
    fn word(&mut self) -> Token<'a> {
        let start = self.at - 1;
        while self
            .sql
            .get(self.at)
            .is_some_and(|&b| WORD_BYTES[usize::from(b)])
        {
            self.at += 1;
        }
        let len = self.at - start;
        if len == 1 && self.sql[start] | 0x20 == b'e' && self.sql.get(self.at) == Some(&b'\'') {
            self.at += 1;
            self.string(true);
            return Token::Other;
        }
        Token::Word(Word {
            text: &self.sql[start..self.at],
            packed: pack_at(self.sql, start, len),
        })
    }

    /// Past `--` to the end of the line.
    fn line_comment(&mut self) {
        self.skip_while(|b| b != b'\n');
    }

    /// Past a `/* … */` comment, nested ones included (the first `/`
    /// already consumed).
    fn block_comment(&mut self) {
        self.at += 1;
        let mut depth = 1u32;
        while let Some(&byte) = self.sql.get(self.at) {
            let next = self.sql.get(self.at + 1).copied();
            match (byte, next) {
                (b'*', Some(b'/')) => {
                    self.at += 2;
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                (b'/', Some(b'*')) => {
                    self.at += 2;
                    depth += 1;
                }
                _ => self.at += 1,
            }
        }
    }

    /// Past a string literal whose opening quote was consumed: `''` is a
    /// quote; with `escapes` (`E'…'`), so is `\'`.
    fn string(&mut self, escapes: bool) {
        while let Some(&byte) = self.sql.get(self.at) {
            self.at += 1;
            match byte {
                b'\\' if escapes => self.at += 1,
                b'\'' if self.sql.get(self.at) == Some(&b'\'') => self.at += 1,
                b'\'' => return,
                _ => {}
            }
        }
    }

    /// A quoted identifier's text; the opening quote was consumed.
    fn quoted(&mut self) -> &'a [u8] {
        let start = self.at;
        while let Some(&byte) = self.sql.get(self.at) {
            self.at += 1;
            if byte == b'"' {
                if self.sql.get(self.at) == Some(&b'"') {
                    self.at += 1;
                    continue;
                }
                return &self.sql[start..self.at - 1];
            }
        }
        &self.sql[start..]
    }

    /// After a `$`: a parameter (`$1`), or a dollar-quoted string
    /// (`$$…$$`, `$tag$…$tag$`) skipped whole.
    fn dollar(&mut self) {
        let start = self.at - 1;
        let rest = &self.sql[self.at..];
        let tag_len = match rest.first() {
            Some(&b) if class(b) == Class::Letter => rest
                .iter()
                .position(|&b| !continues_word(b) || b == b'$')
                .unwrap_or(rest.len()),
            _ => 0,
        };
        if rest.get(tag_len) != Some(&b'$') {
            // `$1`, or a `$` that opens nothing.
            self.skip_while(|b| b.is_ascii_digit());
            return;
        }
        let delimiter = &self.sql[start..self.at + tag_len + 1];
        self.at += tag_len + 1;
        let body = &self.sql[self.at..];
        self.at += body
            .windows(delimiter.len())
            .position(|window| window == delimiter)
            .map_or(body.len(), |end| end + delimiter.len());
    }
}

/// The bytes that continue an unquoted word (`$` too, inside a word).
const WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(CLASSES[byte], Class::Letter | Class::Digit | Class::Dollar);
        byte += 1;
    }
    table
};

/// A byte that continues an unquoted word.
#[inline]
fn continues_word(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

#[cfg(test)]
mod tests;
