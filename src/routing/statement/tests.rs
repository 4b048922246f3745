//! The statement scanner, as tables: what reads, what writes and why,
//! and what the lexer skips.

use super::{intent, pack, pack_at, scan, Intent, Lexer, Seen, Token, Word, REMEMBERED_LEN};

/// Why `sql` writes: the scan's answer, which the thread's memory gives
/// back the same the first time and every time after.
fn why(sql: &str) -> Option<&'static str> {
    let scanned = scan(sql.as_bytes());
    assert_eq!(intent(sql), scanned, "{sql:?} seen for the first time");
    assert_eq!(intent(sql), scanned, "{sql:?} remembered");
    match scanned {
        Intent::Read => None,
        Intent::Write(why) => Some(why),
    }
}

#[test]
fn texts_sharing_a_slot_are_told_apart_by_their_text() {
    let mut seen = Seen::EMPTY;
    // One hash for all three: only the text can tell them apart.
    let read = b"SELECT 1";
    let write = b"INSERT INTO t VALUES (1)";
    assert_eq!(seen.intent(read, 7), Intent::Read);
    assert_eq!(seen.intent(write, 7), Intent::Write("INSERT"));
    assert_eq!(seen.intent(read, 7), Intent::Read);
    // Same length, same hash, one byte apart.
    assert_eq!(
        seen.intent(b"SELECT 1 FOR UPDATE", 7),
        Intent::Write("UPDATE")
    );
    assert_eq!(seen.intent(b"SELECT 1 FOR UPDATf", 7), Intent::Read);
}

#[test]
fn long_statements_are_scanned_every_time() {
    let padding = " ".repeat(REMEMBERED_LEN);
    let read = format!("SELECT 1{padding}");
    let write = format!("SELECT 1{padding} FOR UPDATE");
    for _ in 0..2 {
        assert_eq!(intent(&read), Intent::Read);
        assert_eq!(intent(&write), Intent::Write("UPDATE"));
    }
}

#[test]
fn every_thread_remembers_its_own() {
    let statements = ["SELECT 1", "UPDATE t SET a = 1", "SELECT nextval('s')"];
    let answers: Vec<Intent> = statements.iter().map(|sql| intent(sql)).collect();
    let elsewhere = std::thread::spawn(move || {
        statements
            .iter()
            .map(|sql| (intent(sql), intent(sql)))
            .collect::<Vec<_>>()
    })
    .join()
    .expect("the other thread");
    for (answer, (first, again)) in answers.into_iter().zip(elsewhere) {
        assert_eq!((first, again), (answer, answer));
    }
}

#[test]
fn plain_reads_are_reads() {
    let reads = [
        "SELECT 1",
        "select 1",
        "  \n\tSeLeCt now()",
        "SELECT id, name FROM users WHERE id = $1",
        "SELECT * FROM t WHERE a IN (SELECT b FROM u) ORDER BY 1 LIMIT 10",
        "VALUES (1), (2)",
        "TABLE users",
        "SHOW transaction_isolation",
        "EXPLAIN SELECT * FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "EXPLAIN ANALYZE VERBOSE SELECT 1",
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT 1",
        "EXPLAIN (ANALYZE true, VERBOSE) WITH x AS (SELECT 1) SELECT * FROM x",
        "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r",
        "WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x",
        "(SELECT 1) UNION (SELECT 2)",
        "((VALUES (1)))",
        "SELECT 1;",
        "SELECT 1; SELECT 2",
        "",
        "   ",
        ";",
        "-- only a comment",
        "/* only a comment */",
        "SELECT lastval()",
        "SELECT currval('s')",
        "SELECT pg_current_xact_id_if_assigned()",
        "SELECT txid_current_if_assigned()",
        "SELECT lo_get(42)",
        "SELECT key, share FROM stocks",
        "SELECT a FROM t FOR READ ONLY",
        "COPY t TO STDOUT",
        "copy t (a, b) to stdout with (format csv)",
        "COPY (SELECT a FROM t WHERE b > 0) TO STDOUT",
        "COPY public.t TO STDOUT",
        "SELECT updated_at, inserted, deleted_by, merged, intoxicated FROM t",
        "SELECT update_count FROM stats",
        "SELECT nextvalue FROM t",
        "SELECT pg_advisory FROM t",
        "SELECT 'é', 名前 FROM テーブル",
    ];
    for sql in reads {
        assert_eq!(intent(sql), Intent::Read, "{sql:?}");
    }
}

#[test]
fn writing_statements_are_writes_and_say_why() {
    let writes = [
        ("INSERT INTO t VALUES (1) RETURNING id", "INSERT"),
        ("insert into t values (1)", "INSERT"),
        ("UPDATE t SET a = 1 RETURNING a", "UPDATE"),
        ("DELETE FROM t WHERE id = $1 RETURNING *", "DELETE"),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "MERGE",
        ),
        ("COPY t FROM STDIN", "COPY"),
        ("copy t (a, b) from stdin with (format csv)", "COPY"),
        ("COPY public.t FROM '/tmp/x.csv'", "COPY"),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", "DELETE"),
        ("CREATE TABLE t (id int)", "CREATE"),
        ("ALTER TABLE t ADD COLUMN b int", "ALTER"),
        ("DROP TABLE t", "DROP"),
        ("TRUNCATE t", "TRUNCATE"),
        ("CALL do_things(1)", "CALL"),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", "LOCK"),
        ("DO $$ BEGIN PERFORM 1; END $$", "DO"),
        ("REFRESH MATERIALIZED VIEW v", "REFRESH"),
        ("VACUUM t", "VACUUM"),
        ("ANALYZE t", "ANALYZE"),
        ("GRANT SELECT ON t TO r", "GRANT"),
        ("COMMENT ON TABLE t IS 'x'", "COMMENT"),
        ("SET statement_timeout = 0", "SET"),
        ("LISTEN ch", "LISTEN"),
        ("NOTIFY ch", "NOTIFY"),
        ("REINDEX TABLE t", "REINDEX"),
        ("CLUSTER t", "CLUSTER"),
        ("SECURITY LABEL ON TABLE t IS 'x'", "statement"),
        ("IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y", "statement"),
        ("frobnicate everything", "statement"),
        ("SELECT * FROM t FOR UPDATE", "UPDATE"),
        (
            "SELECT * FROM t WHERE id = 1 FOR UPDATE SKIP LOCKED",
            "UPDATE",
        ),
        ("SELECT * FROM t FOR NO KEY UPDATE", "UPDATE"),
        ("SELECT * FROM t FOR SHARE", "SHARE"),
        ("select * from t for share of t nowait", "SHARE"),
        ("SELECT * FROM t FOR KEY SHARE", "SHARE"),
        (
            "SELECT * FROM t WHERE a IN (SELECT b FROM u FOR UPDATE)",
            "UPDATE",
        ),
        ("SELECT * INTO t2 FROM t", "INTO"),
        (
            "WITH n AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM n",
            "INSERT",
        ),
        (
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "INSERT",
        ),
        (
            "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT count(*) FROM x",
            "UPDATE",
        ),
        (
            "with x as (delete from t returning *) select * from x",
            "DELETE",
        ),
        (
            "WITH x AS (SELECT 1) MERGE INTO t USING x ON true WHEN MATCHED THEN DO NOTHING",
            "MERGE",
        ),
        ("SELECT nextval('orders_id_seq')", "nextval"),
        ("SELECT NEXTVAL('s')", "nextval"),
        ("SELECT pg_catalog.nextval('s')", "nextval"),
        ("VALUES (nextval('s'))", "nextval"),
        ("SELECT setval('s', 42)", "setval"),
        ("SELECT pg_advisory_lock(1)", "pg_advisory_lock"),
        ("SELECT pg_try_advisory_xact_lock(1)", "pg_advisory_lock"),
        ("SELECT pg_advisory_unlock_all()", "pg_advisory_lock"),
        ("SELECT pg_notify('ch', 'x')", "pg_notify"),
        ("SELECT txid_current()", "txid_current"),
        ("SELECT pg_current_xact_id()", "pg_current_xact_id"),
        ("SELECT lo_create(0)", "lo_create"),
        ("SELECT lo_unlink(42)", "lo_unlink"),
        ("SELECT \"nextval\"('s')", "nextval"),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", "INSERT"),
        ("EXPLAIN (ANALYZE) DELETE FROM t", "DELETE"),
        ("EXPLAIN ANALYZE VERBOSE UPDATE t SET a = 1", "UPDATE"),
        (
            "EXPLAIN (ANALYZE, FORMAT JSON) CREATE TABLE t2 AS SELECT 1",
            "CREATE",
        ),
        ("EXPLAIN SELECT nextval('s')", "nextval"),
        ("SELECT 1; DELETE FROM t", "DELETE"),
        ("SELECT 1; VACUUM", "VACUUM"),
        ("(INSERT INTO t VALUES (1))", "INSERT"),
        ("/* hi */ -- there\n INSERT INTO t VALUES (1)", "INSERT"),
    ];
    for (sql, expected) in writes {
        assert_eq!(why(sql), Some(expected), "{sql:?}");
    }
}

#[test]
fn keywords_inside_literals_identifiers_and_comments_do_not_count() {
    let reads = [
        "SELECT 'INSERT INTO t VALUES (1)'",
        "SELECT 'it''s an UPDATE'",
        "SELECT 'a', 'DELETE', 'b'",
        "SELECT E'don\\'t DELETE'",
        "SELECT e'\\\\' , 'x'",
        "SELECT $$ DELETE FROM t $$",
        "SELECT $body$ UPDATE t; $ $$ $body$",
        "SELECT $a$ $b$ INSERT $b$ $a$",
        "SELECT \"update\", \"insert\" FROM t",
        "SELECT \"a \"\" DELETE\" FROM t",
        "SELECT \"NEXTVAL\"('s')",
        "SELECT 1 -- DELETE FROM t",
        "SELECT 1 /* UPDATE t */",
        "SELECT 1 /* outer /* nested DELETE */ still UPDATE */",
        "/* FOR UPDATE */ SELECT 1",
        "SELECT B'0101', X'FF', N'INSERT', U&'d\\0061t\\+000061 DELETE'",
        "SELECT $1, $2::text",
        "SELECT a$update FROM t",
        "SELECT 1e5, 2.5e-3, 0x1F",
        "SELECT 'FOR' SHARE",
    ];
    for sql in reads {
        assert_eq!(intent(sql), Intent::Read, "{sql:?}");
    }
}

#[test]
fn a_literal_does_not_hide_what_follows_it() {
    let writes = [
        ("SELECT 'x' FROM t FOR UPDATE", "UPDATE"),
        ("SELECT 'it''s' FROM t FOR UPDATE", "UPDATE"),
        ("SELECT E'\\'' FROM t FOR UPDATE", "UPDATE"),
        ("SELECT $$a$$ FROM t FOR UPDATE", "UPDATE"),
        ("SELECT $t$ $$ $t$ FROM t FOR UPDATE", "UPDATE"),
        ("SELECT \"a\"\"b\" FROM t FOR UPDATE", "UPDATE"),
        ("SELECT 1 /* a /* b */ c */ FROM t FOR UPDATE", "UPDATE"),
        ("SELECT 1 -- a\n FOR UPDATE", "UPDATE"),
        ("SELECT $1 FROM t FOR UPDATE", "UPDATE"),
        ("SELECT 'x';DELETE FROM t", "DELETE"),
    ];
    for (sql, expected) in writes {
        assert_eq!(why(sql), Some(expected), "{sql:?}");
    }
}

#[test]
fn unterminated_text_ends_the_scan_without_panicking() {
    for sql in [
        "SELECT 'open",
        "SELECT E'open\\",
        "SELECT \"open",
        "SELECT $$ open",
        "SELECT $tag$ open $ta",
        "SELECT 1 /* open /* nested */",
        "SELECT 1 --",
        "SELECT $",
        "SELECT $$",
        "SELECT (((",
        "SELECT )))",
        "EXPLAIN (",
        "EXPLAIN",
        "COPY",
        "-",
        "/",
        "E",
        "E'",
    ] {
        let _ = intent(sql);
    }
    assert_eq!(intent("EXPLAIN"), Intent::Read);
    assert_eq!(why("COPY"), None, "a COPY with no direction sends nothing");
}

#[test]
fn the_lexer_splits_words_and_skips_the_rest() {
    let sql = b"Select \"Q\"(a$1, $2) -- c\n/* d */; 'e' E'f' $$g$$";
    let tokens: Vec<Token<'_>> = Lexer { sql, at: 0 }.collect();
    let word = |text: &'static [u8]| {
        Token::Word(Word {
            text,
            packed: pack(text),
        })
    };
    assert_eq!(
        tokens,
        [
            word(b"Select"),
            Token::Quoted(b"Q"),
            Token::Open,
            word(b"a$1"),
            Token::Other,
            Token::Other,
            Token::Close,
            Token::End,
            Token::Other,
            Token::Other,
            Token::Other,
        ]
    );
}

#[test]
fn any_text_is_scanned_without_panicking() {
    // Every prefix of tricky statements (cut mid-literal, mid-comment).
    let samples = [
        "SELECT E'a\\'b' , $x$ y $x$ , \"q\"\"r\" /* s /* t */ u */ -- v\n FOR KEY SHARE; INSERT",
        "COPY (SELECT 1) TO STDOUT; EXPLAIN (ANALYZE) UPDATE t SET a = 'é'",
    ];
    for sample in samples {
        for end in (0..=sample.len()).filter(|end| sample.is_char_boundary(*end)) {
            let _ = intent(&sample[..end]);
        }
    }
    let mut rng = fastrand::Rng::with_seed(20);
    let alphabet = b"'\"$-/*();eE \nSELECT FOR UPDATE INSERT1\\";
    for _ in 0..2_000 {
        let len = rng.usize(0..40);
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())])
            .collect();
        let sql = String::from_utf8(bytes).expect("ASCII");
        let _ = intent(&sql);
    }
}

#[test]
fn a_word_packs_the_same_from_one_load_or_byte_by_byte() {
    let sql = b"select NextVal lo_put xy a_b$9 longerthan8 SELECT";
    let mut at = 0;
    for word in sql.split(|b| *b == b' ') {
        let expected = match word.len() {
            0..=8 => pack(word),
            _ => 0,
        };
        assert_eq!(
            pack_at(sql, at, word.len()),
            expected,
            "{:?}",
            std::str::from_utf8(word)
        );
        at += word.len() + 1;
    }
    assert_eq!(pack(b"select"), pack(b"SELECT"));
    assert_ne!(pack(b"select"), pack(b"selects"));
    // Digits, `_` and `$` never fold into a letter.
    for other in b"0123456789_$" {
        for letter in (b'a'..=b'z').chain(b'A'..=b'Z') {
            assert_ne!(pack(&[b'x', *other]), pack(&[b'x', letter]));
        }
    }
}
