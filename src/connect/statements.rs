//! How a statement reaches a node's server, as its
//! [`StatementMode`] says: a named statement prepared once per connection
//! and cached there, or an unnamed one sent whole in one round trip (safe
//! behind a transaction-pooling proxy), with its parameter types learnt
//! once per node and statement text.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};

use deadpool_postgres::ClientWrapper;
use futures_util::future::Either;
use futures_util::{TryFutureExt, TryStreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row, Statement};

use crate::config::StatementMode;

/// Statement parameters, as tokio-postgres takes them.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Statement texts whose parameter types a node remembers; past this, an
/// arbitrary one is forgotten for each new one (learning it again costs
/// one extra round trip).
const MAX_LEARNT: usize = 1024;

/// Where a statement is sent from: on its own (the server commits it at
/// once), or inside a transaction block pgrouter or the caller opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// No transaction open: a pooler may hand each round trip to another
    /// server connection.
    None,
    /// A transaction is open: a pooler keeps it on one server connection.
    Open,
}

/// A node's statement mode, and (unnamed mode) the parameter types learnt
/// per statement text, shared by every connection of the node.
#[derive(Debug)]
pub(crate) struct Statements {
    mode: StatementMode,
    learnt: RwLock<HashMap<Box<str>, Arc<[Type]>>>,
}

/// A statement's first row and its number of rows, for `query_one` and
/// `query_opt`: no `Vec` is built for an answer that is one row.
#[derive(Debug)]
pub(crate) struct Counted<R> {
    /// The first row, if any.
    pub(crate) first: Option<R>,
    /// Every row the statement returned, the first included.
    pub(crate) rows: usize,
}

/// A statement ready to run on one connection.
#[derive(Debug)]
pub(crate) enum Ready<'s> {
    /// Prepared (and cached) on this connection.
    Named(Statement),
    /// Sent whole with these parameter types.
    Unnamed(&'s str, Arc<[Type]>),
}

impl Statements {
    pub(crate) fn new(mode: StatementMode) -> Self {
        Self {
            mode,
            learnt: RwLock::new(HashMap::new()),
        }
    }

    pub(crate) fn mode(&self) -> StatementMode {
        self.mode
    }

    /// `sql`, ready to run with `params` on `client`: prepared (cached) in
    /// prepared mode; in unnamed mode, its parameter types, learnt from
    /// the server the first time (see [`describe`]), unless the text has
    /// no `$` and no parameters are given.
    ///
    /// No `async` layer of its own: the prepared-mode path is deadpool's
    /// cache lookup itself, on every statement.
    pub(crate) fn prepare<'a, 's: 'a>(
        &'a self,
        client: &'a ClientWrapper,
        sql: &'s str,
        params: Params<'a>,
        block: Block,
    ) -> impl Future<Output = Result<Ready<'s>, tokio_postgres::Error>> + Send + 'a {
        match self.mode {
            StatementMode::Prepared => {
                Either::Left(client.prepare_cached(sql).map_ok(Ready::Named))
            }
            StatementMode::Unnamed => Either::Right(self.types(client, sql, params, block)),
        }
    }

    /// pgrouter's own statement, whose parameter types are known: no
    /// round trip in unnamed mode.
    pub(crate) async fn own<'s>(
        &self,
        client: &ClientWrapper,
        sql: &'s str,
        types: &[Type],
    ) -> Result<Ready<'s>, tokio_postgres::Error> {
        match self.mode {
            StatementMode::Prepared => client.prepare_cached(sql).await.map(Ready::Named),
            StatementMode::Unnamed => Ok(Ready::Unnamed(sql, Arc::from(types))),
        }
    }

    async fn types<'s>(
        &self,
        client: &Client,
        sql: &'s str,
        params: Params<'_>,
        block: Block,
    ) -> Result<Ready<'s>, tokio_postgres::Error> {
        // Parameters are written `$n`: a text without `$` has none.
        if params.is_empty() && !sql.contains('$') {
            return Ok(Ready::Unnamed(sql, Arc::from([])));
        }
        if let Some(types) = self.learnt(sql).filter(|t| t.len() == params.len()) {
            return Ok(Ready::Unnamed(sql, types));
        }
        let types = describe(client, sql, params, block).await?;
        self.learn(sql, Arc::clone(&types));
        Ok(Ready::Unnamed(sql, types))
    }

    fn learnt(&self, sql: &str) -> Option<Arc<[Type]>> {
        let learnt = self.learnt.read().unwrap_or_else(PoisonError::into_inner);
        learnt.get(sql).cloned()
    }

    fn learn(&self, sql: &str, types: Arc<[Type]>) {
        let mut learnt = self.learnt.write().unwrap_or_else(PoisonError::into_inner);
        if learnt.len() >= MAX_LEARNT && !learnt.contains_key(sql) {
            if let Some(old) = learnt.keys().next().cloned() {
                learnt.remove(&old);
            }
        }
        learnt.insert(sql.into(), types);
    }

    /// How many statement texts have their types learnt (for tests).
    #[cfg(test)]
    fn learnt_len(&self) -> usize {
        self.learnt
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The parameter types of `sql`, asked of the server without leaving a
/// named statement behind on any server connection a pooler might hand to
/// another client: prepared and closed again inside a transaction block
/// (one a pooler keeps on one server connection: `BEGIN` pipelined with the
/// prepare, then the close and `ROLLBACK`), or inside the caller's open
/// one. A parameter count that does not match `params` fails as in
/// prepared mode, with tokio-postgres's own error, before anything runs.
async fn describe(
    client: &Client,
    sql: &str,
    params: Params<'_>,
    block: Block,
) -> Result<Arc<[Type]>, tokio_postgres::Error> {
    if block == Block::Open {
        let statement = client.prepare(sql).await?;
        return check(client, statement, params).await;
    }
    // Biased: BEGIN is sent first, the prepare right behind it.
    let (begun, prepared) =
        tokio::join!(biased; client.batch_execute("BEGIN"), client.prepare(sql));
    let described = match (begun, prepared) {
        (Err(error), _) | (Ok(()), Err(error)) => Err(error),
        // Dropping the statement sends its close, ahead of the ROLLBACK.
        (Ok(()), Ok(statement)) => check(client, statement, params).await,
    };
    let ended = client.batch_execute("ROLLBACK").await;
    let types = described?;
    ended?;
    Ok(types)
}

/// The statement's parameter types, or tokio-postgres's error for a wrong
/// number of parameters (raised while encoding: nothing is sent).
async fn check(
    client: &Client,
    statement: Statement,
    params: Params<'_>,
) -> Result<Arc<[Type]>, tokio_postgres::Error> {
    if statement.params().len() != params.len() {
        client.execute(&statement, params).await?;
    }
    Ok(Arc::from(statement.params()))
}

impl Ready<'_> {
    /// Every row.
    pub(crate) fn query<'a>(
        &'a self,
        client: &'a Client,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        async move {
            match self {
                Ready::Named(statement) => client.query(statement, params).await,
                Ready::Unnamed(sql, types) => client.query_typed(sql, &typed(params, types)).await,
            }
        }
    }

    /// The number of rows affected.
    pub(crate) fn execute<'a>(
        &'a self,
        client: &'a Client,
        params: Params<'a>,
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        async move {
            match self {
                Ready::Named(statement) => client.execute(statement, params).await,
                Ready::Unnamed(sql, types) => {
                    client.execute_typed(sql, &typed(params, types)).await
                }
            }
        }
    }

    /// The first row and the number of rows, streamed: the rows after the
    /// first are counted as they arrive, not kept. An unnamed statement is
    /// sent as `sql` (a statement kept without its text is given it again).
    pub(crate) async fn query_counted(
        &self,
        client: &Client,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Counted<Row>, tokio_postgres::Error> {
        let rows = match self {
            Ready::Named(statement) => client.query_raw(statement, params.iter().copied()).await?,
            Ready::Unnamed(_, types) => client.query_typed_raw(sql, typed(params, types)).await?,
        };
        let mut rows = std::pin::pin!(rows);
        let Some(first) = rows.try_next().await? else {
            return Ok(Counted {
                first: None,
                rows: 0,
            });
        };
        let mut count = 1;
        while rows.try_next().await?.is_some() {
            count += 1;
        }
        Ok(Counted {
            first: Some(first),
            rows: count,
        })
    }

    /// Exactly one row (tokio-postgres's `query_one`).
    pub(crate) async fn query_one(
        &self,
        client: &Client,
        params: Params<'_>,
    ) -> Result<Row, tokio_postgres::Error> {
        match self {
            Ready::Named(statement) => client.query_one(statement, params).await,
            Ready::Unnamed(sql, types) => client.query_typed_one(sql, &typed(params, types)).await,
        }
    }
}

/// Each parameter with its type. [`Statements::prepare`] made their
/// numbers equal.
fn typed<'a>(params: Params<'a>, types: &[Type]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

/// A named statement of tokio-postgres's (`"s<n>"`, as pgrouter
/// prepares them) was missing on the server connection that got it
/// (26000), or its name was already taken there (42P05): the sign of a
/// transaction-pooling proxy in front of a node in prepared mode. A
/// caller's own `EXECUTE` of a statement of another name is not.
pub(crate) fn lost_to_a_pooler(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return false;
    };
    let code = db.code();
    (*code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT)
        && names_a_client_statement(db.message())
}

/// Whether `message` quotes a statement name of tokio-postgres's form.
fn names_a_client_statement(message: &str) -> bool {
    message.split('"').skip(1).step_by(2).any(|name| {
        name.strip_prefix('s')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learnt_types_are_bounded() {
        let statements = Statements::new(StatementMode::Unnamed);
        for n in 0..MAX_LEARNT + 10 {
            statements.learn(&format!("SELECT $1::int + {n}"), Arc::from([Type::INT4]));
        }
        assert_eq!(statements.learnt_len(), MAX_LEARNT);
        let last = format!("SELECT $1::int + {}", MAX_LEARNT + 9);
        assert_eq!(statements.learnt(&last).as_deref(), Some(&[Type::INT4][..]));
    }

    #[test]
    fn only_client_statement_names_point_at_a_pooler() {
        assert!(names_a_client_statement(
            r#"prepared statement "s12" does not exist"#
        ));
        assert!(names_a_client_statement(
            r#"prepared statement "s0" already exists"#
        ));
        assert!(!names_a_client_statement(
            r#"prepared statement "report" does not exist"#
        ));
        assert!(!names_a_client_statement(
            r#"prepared statement "s" does not exist"#
        ));
        assert!(!names_a_client_statement(
            "prepared statement s12 does not exist"
        ));
    }

    #[test]
    fn parameters_are_paired_with_their_types() {
        let (a, b) = (1i32, "x");
        let params: Params<'_> = &[&a, &b];
        let pairs = typed(params, &[Type::INT4, Type::TEXT]);
        let types: Vec<Type> = pairs.into_iter().map(|(_, t)| t).collect();
        assert_eq!(types, [Type::INT4, Type::TEXT]);
    }
}
