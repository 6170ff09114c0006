//! What one commit writes, kept as rows and keys until it is built: the commits of a
//! tenant that share a transaction on PostgreSQL ([`super::Database::commit_shared`])
//! then insert all their rows of a table with one statement, delete all their keys
//! with one, and add their sum to the tenant's usage with one. Each statement of a
//! transaction is a round trip to PostgreSQL, and a tenant's transactions run one at
//! a time: four statements per upload bounded one tenant to about one upload per four
//! round trips, whatever the cores (docs/performance.md).

use sea_orm::sea_query::{
    DeleteStatement, DynIden, Expr, ExprTrait, InsertStatement, IntoIden, Query, TableRef,
};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, DbBackend, EntityName, EntityTrait, Iterable,
    Statement, Value,
};

/// At most this many rows in one INSERT (and keys in one DELETE), so that a
/// statement stays a few KiB. Larger ones stalled 40 ms (Linux's delayed ACK) over
/// TCP, never over a Unix socket: with 500, one group in seven took 45 to 55 ms;
/// with 16, none did. sqlx does not set TCP_NODELAY, and a statement past the 16 KiB
/// a new connection's send buffer starts with likely goes out in two writes, the
/// second held until the first is acknowledged.
const ROWS_PER_STATEMENT: usize = 16;

/// The writes of one commit: rows to insert and keys to delete, which the commits
/// built together merge per table; statements of their own, which run after them (a
/// statement may read those rows, never the reverse); last, amounts to add to a row.
pub struct Writes {
    backend: DbBackend,
    rows: Vec<Row>,
    deletes: Vec<Delete>,
    statements: Vec<Statement>,
    sums: Vec<Sum>,
}

/// Builds the statement that adds amounts to one row.
type AddStatement = Box<dyn Fn(DbBackend, [i64; 2]) -> Statement + Send + Sync>;

/// One row for a table's INSERT.
struct Row {
    table: TableRef,
    columns: Vec<DynIden>,
    values: Vec<Expr>,
}

/// Rows of a table whose `column` holds one of `keys`, to delete.
struct Delete {
    table: TableRef,
    column: DynIden,
    keys: Vec<Value>,
}

/// Two amounts (bytes and files, say) added to the row of `key`.
struct Sum {
    key: String,
    amounts: [i64; 2],
    add: AddStatement,
}

impl Writes {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            rows: Vec::new(),
            deletes: Vec::new(),
            statements: Vec::new(),
            sums: Vec::new(),
        }
    }

    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// Inserts `model`'s set columns, as sea-orm's `Entity::insert` would.
    pub fn insert<A: ActiveModelTrait>(&mut self, mut model: A) {
        let mut columns = Vec::new();
        let mut values = Vec::new();
        for column in <A::Entity as EntityTrait>::Column::iter() {
            if let ActiveValue::Set(value) | ActiveValue::Unchanged(value) = model.take(column) {
                values.push(column.save_as(Expr::val(value)));
                columns.push(column.into_iden());
            }
        }
        self.rows.push(Row {
            table: A::Entity::default().table_ref(),
            columns,
            values,
        });
    }

    /// Deletes the rows whose `column` holds one of `keys`.
    pub fn delete_where_in<C>(&mut self, column: C, keys: impl IntoIterator<Item = Value>)
    where
        C: ColumnTrait,
    {
        self.deletes.push(Delete {
            table: column.entity_name().into(),
            column: column.into_iden(),
            keys: keys.into_iter().collect(),
        });
    }

    /// Runs `statement` after the rows and deletes.
    pub fn statement(&mut self, statement: Statement) {
        self.statements.push(statement);
    }

    /// Adds `amounts` to the row of `key` last, with the statement `add` builds: the
    /// commits built together add their sums of one key once, with the first one's
    /// `add` (the row's lock is then taken once, at the end of the transaction). So
    /// every sum of a key must be added by the same statement (a tenant's usage, by
    /// `quotas::grow`), and only grow the row, so that a total within the row's
    /// limits has every partial sum within them.
    pub fn add_to(
        &mut self,
        key: &str,
        amounts: [i64; 2],
        add: impl Fn(DbBackend, [i64; 2]) -> Statement + Send + Sync + 'static,
    ) {
        self.sums.push(Sum {
            key: key.to_owned(),
            amounts,
            add: Box::new(add),
        });
    }

    /// The statements of this commit alone.
    pub fn statements(&self) -> Vec<Statement> {
        merged(self.backend, [self])
    }
}

/// The statements of `commits` in one transaction: the rows of each table in
/// INSERTs of [`ROWS_PER_STATEMENT`] rows, in the order the tables first come; the
/// deletes of each table and column likewise; then every commit's statements, in
/// order; last, one statement per key for their sums.
pub fn merged<'a>(
    backend: DbBackend,
    commits: impl IntoIterator<Item = &'a Writes>,
) -> Vec<Statement> {
    let mut inserts: Vec<Vec<&Row>> = Vec::new();
    let mut deletes: Vec<Vec<&Delete>> = Vec::new();
    let mut statements = Vec::new();
    let mut sums: Vec<Vec<&Sum>> = Vec::new();
    for commit in commits {
        for row in &commit.rows {
            join(&mut inserts, row, |a, b| {
                a.table == b.table && a.columns == b.columns
            });
        }
        for delete in &commit.deletes {
            join(&mut deletes, delete, |a, b| {
                a.table == b.table && a.column == b.column
            });
        }
        statements.extend(commit.statements.iter().cloned());
        for sum in &commit.sums {
            join(&mut sums, sum, |a, b| a.key == b.key);
        }
    }
    let mut built = Vec::new();
    for rows in inserts {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let mut insert = InsertStatement::new();
            insert
                .into_table(chunk[0].table.clone())
                .columns(chunk[0].columns.iter().cloned());
            for row in chunk {
                insert.values_panic(row.values.iter().cloned());
            }
            built.push(backend.build(&insert));
        }
    }
    for deletes in deletes {
        let keys: Vec<&Value> = deletes.iter().flat_map(|delete| &delete.keys).collect();
        for keys in keys.chunks(ROWS_PER_STATEMENT) {
            let delete: DeleteStatement = Query::delete()
                .from_table(deletes[0].table.clone())
                .and_where(
                    Expr::col(deletes[0].column.clone()).is_in(keys.iter().copied().cloned()),
                )
                .to_owned();
            built.push(backend.build(&delete));
        }
    }
    built.extend(statements);
    for sums in sums {
        let total = sums.iter().fold([0_i64; 2], |[a, b], sum| {
            [
                a.saturating_add(sum.amounts[0]),
                b.saturating_add(sum.amounts[1]),
            ]
        });
        built.push((sums[0].add)(backend, total));
    }
    built
}

/// Adds `item` to the first of `groups` whose items are the `same` as it, or to a
/// new group at the end: first come, first built.
fn join<'a, T>(groups: &mut Vec<Vec<&'a T>>, item: &'a T, same: impl Fn(&T, &T) -> bool) {
    match groups.iter_mut().find(|group| same(group[0], item)) {
        Some(group) => group.push(item),
        None => groups.push(vec![item]),
    }
}

#[cfg(test)]
mod tests {
    use entity::storage_deletion;
    use sea_orm::{QueryTrait, Set};

    use super::*;

    fn intent(key: &str) -> storage_deletion::ActiveModel {
        storage_deletion::ActiveModel {
            storage_key: Set(key.to_owned()),
            attempts: Set(0),
            created_at: Set(chrono::DateTime::UNIX_EPOCH),
            intent: Set(true),
            ..Default::default()
        }
    }

    /// Two commits' rows of one table become one INSERT, their keys one DELETE,
    /// their own statements follow, each commit's in order, and their sums of one
    /// key come last as one statement.
    #[test]
    fn commits_built_together_share_one_statement_per_table() {
        let commit = |key: &str, then: &str| {
            let mut writes = Writes::new(DbBackend::Postgres);
            writes.insert(intent(key));
            writes.delete_where_in(storage_deletion::Column::StorageKey, [key.into()]);
            writes.statement(
                DbBackend::Postgres.build(
                    Query::update()
                        .table(storage_deletion::Entity)
                        .value(storage_deletion::Column::Attempts, 1)
                        .and_where(storage_deletion::Column::StorageKey.eq(then)),
                ),
            );
            writes.add_to("k", [1, 10], |backend, [attempts, _]| {
                backend.build(
                    Query::update()
                        .table(storage_deletion::Entity)
                        .value(storage_deletion::Column::Attempts, attempts),
                )
            });
            writes
        };
        let statements = merged(DbBackend::Postgres, &[commit("a", "x"), commit("b", "y")]);
        let sql: Vec<_> = statements.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 5, "{sql:#?}");
        assert!(
            sql[0].starts_with(r#"INSERT INTO "storage_deletions""#),
            "{}",
            sql[0]
        );
        assert!(
            sql[0].ends_with("($1, $2, $3, $4), ($5, $6, $7, $8)"),
            "{}",
            sql[0]
        );
        assert!(
            sql[1].starts_with(r#"DELETE FROM "storage_deletions""#),
            "{}",
            sql[1]
        );
        assert!(sql[1].ends_with("IN ($1, $2)"), "{}", sql[1]);
        let updated: Vec<_> = statements[2..4]
            .iter()
            .map(|s| s.values.as_ref().map(|v| v.0[1].clone()))
            .collect();
        assert_eq!(updated, [Some("x".into()), Some("y".into())]);
        let summed = statements[4].values.as_ref().map(|v| v.0.clone());
        assert_eq!(summed, Some(vec![2_i64.into()]), "one sum, last");
    }

    /// A commit built alone inserts as sea-orm's own `Entity::insert` does.
    #[test]
    fn a_row_alone_is_the_insert_sea_orm_builds() {
        let mut writes = Writes::new(DbBackend::Postgres);
        writes.insert(intent("a"));
        let built = writes.statements();
        let expected =
            DbBackend::Postgres.build(&storage_deletion::Entity::insert(intent("a")).into_query());
        assert_eq!(built, [expected]);
    }

    /// More rows than one statement may bind go in several.
    #[test]
    fn rows_past_the_bind_limit_take_several_statements() {
        let mut writes = Writes::new(DbBackend::Sqlite);
        for n in 0..ROWS_PER_STATEMENT + 1 {
            writes.insert(intent(&n.to_string()));
        }
        assert_eq!(writes.statements().len(), 2);
    }
}
