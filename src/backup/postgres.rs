//! PostgreSQL backups with the client tools: `pg_dump --format=custom` streamed
//! into storage, `pg_restore --clean` from a downloaded copy. The password goes to
//! them in `PGPASSWORD` (readable by this user only), never on a command line.

use std::fmt;
use std::process::Stdio;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::BackupError;

/// Bytes of a tool's error output kept (its end) for the error message.
const STDERR_LIMIT: usize = 16 * 1024;

/// A PostgreSQL `DATABASE_URL`, split into the URL without its password (safe to
/// show and to pass as an argument) and the password.
#[derive(Clone)]
pub struct PgTarget {
    url: String,
    password: Option<String>,
}

impl PgTarget {
    pub fn parse(database_url: &str) -> Result<Self, BackupError> {
        let mut url = url::Url::parse(database_url)
            .map_err(|err| BackupError::Database(format!("not a PostgreSQL URL ({err})")))?;
        let mut password = url.password().map(|password| {
            percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned()
        });
        if password.is_some() {
            url.set_password(None)
                .map_err(|()| BackupError::Database("not a PostgreSQL URL".into()))?;
        }
        // The parameters in libpq's names: the server's driver (sqlx) also takes
        // spellings of its own, which the tools refuse ("invalid URI query
        // parameter"), so a URL the server runs on would fail every backup.
        let mut kept = Vec::new();
        let mut options = Vec::new();
        for (name, value) in url.query_pairs().into_owned() {
            let libpq = match name.as_str() {
                // libpq also takes the password as a parameter.
                "password" => {
                    password = Some(value);
                    continue;
                }
                "ssl-mode" => "sslmode",
                "ssl-root-cert" | "ssl-ca" => "sslrootcert",
                "ssl-cert" => "sslcert",
                "ssl-key" => "sslkey",
                "statement-cache-capacity" => continue,
                "options" => {
                    options.push(value);
                    continue;
                }
                setting if setting.starts_with("options[") && setting.ends_with(']') => {
                    let setting = &setting["options[".len()..setting.len() - 1];
                    // libpq splits `options` at spaces; a backslash keeps one.
                    let escaped = format!("{setting}={value}")
                        .replace('\\', "\\\\")
                        .replace(' ', "\\ ");
                    options.push(format!("-c {escaped}"));
                    continue;
                }
                _ => name.as_str(),
            };
            kept.push((libpq.to_owned(), value));
        }
        if !options.is_empty() {
            kept.push(("options".to_owned(), options.join(" ")));
        }
        url.set_query(None);
        if !kept.is_empty() {
            // libpq decodes `%XX` only: a space in form encoding's `+` would reach it
            // as a plus (a literal plus is written `%2B`).
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(kept)
                .finish()
                .replace('+', "%20");
            url.set_query(Some(&query));
        }
        Ok(Self {
            url: url.to_string(),
            password,
        })
    }

    /// `program` against this database, asking no password on a terminal, its
    /// error output captured.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .arg("--no-password")
            .arg(format!("--dbname={}", self.url))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(password) = &self.password {
            command.env("PGPASSWORD", password);
        }
        command
    }

    /// `text` with the password blotted out, should a tool ever echo it.
    fn redact(&self, text: &str) -> String {
        match &self.password {
            Some(password) if !password.is_empty() => text.replace(password.as_str(), "***"),
            _ => text.to_owned(),
        }
    }

    /// A consistent snapshot (`pg_dump` runs in one repeatable-read transaction) as
    /// a stream of the custom-format archive; the stream ends with an error, not
    /// quietly, when `pg_dump` fails, so the caller's write is discarded.
    pub fn dump(
        &self,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Unpin + use<>, BackupError> {
        let mut command = self.command("pg_dump");
        command.arg("--format=custom").stdout(Stdio::piped());
        let mut running = Running::spawn("pg_dump", command)?;
        let stdout = running
            .child
            .stdout
            .take()
            .ok_or_else(|| BackupError::Tool("pg_dump gave no output pipe".into()))?;
        let target = self.clone();
        let finished = futures::stream::once(Box::pin(async move {
            running.finish(&target).await.map_err(std::io::Error::other)
        }))
        .filter_map(|finished| std::future::ready(finished.err().map(Err)));
        Ok(tokio_util::io::ReaderStream::with_capacity(stdout, 256 * 1024).chain(finished))
    }

    /// Replaces the objects of the database with those of the archive at `archive`,
    /// in one transaction: a failed restore changes nothing.
    pub async fn restore(&self, archive: &std::path::Path) -> Result<(), BackupError> {
        let mut command = self.command("pg_restore");
        command
            .args([
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                "--exit-on-error",
            ])
            .arg(archive)
            .stdout(Stdio::null());
        Running::spawn("pg_restore", command)?.finish(self).await
    }
}

/// A client tool at work; its error output is read as it comes, so a chatty tool
/// never blocks on a full pipe.
struct Running {
    program: &'static str,
    child: Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Running {
    fn spawn(program: &'static str, mut command: Command) -> Result<Self, BackupError> {
        let mut child = command.spawn().map_err(|err| spawn_failed(program, &err))?;
        let pipe = child.stderr.take();
        let stderr = tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut chunk = [0u8; 4096];
            if let Some(mut pipe) = pipe {
                while let Ok(read @ 1..) = pipe.read(&mut chunk).await {
                    kept.extend_from_slice(&chunk[..read]);
                    if kept.len() > 2 * STDERR_LIMIT {
                        kept.drain(..kept.len() - STDERR_LIMIT);
                    }
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        });
        Ok(Self {
            program,
            child,
            stderr,
        })
    }

    /// Waits for the tool; a failure carries what it said, with `target`'s
    /// password blotted out.
    async fn finish(mut self, target: &PgTarget) -> Result<(), BackupError> {
        let program = self.program;
        let status = self
            .child
            .wait()
            .await
            .map_err(|err| BackupError::Tool(format!("{program}: {err}")))?;
        if status.success() {
            return Ok(());
        }
        let said = target.redact(self.stderr.await.unwrap_or_default().trim());
        Err(BackupError::Tool(format!(
            "{program} failed ({status}){}{said}",
            if said.is_empty() { "" } else { ": " }
        )))
    }
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

fn spawn_failed(program: &str, err: &std::io::Error) -> BackupError {
    if err.kind() == std::io::ErrorKind::NotFound {
        BackupError::Tool(format!(
            "{program} is not installed (not found on PATH): install the PostgreSQL client \
             tools of the server's major version or newer (Debian: postgresql-client)"
        ))
    } else {
        BackupError::Tool(format!("cannot start {program}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        let target =
            PgTarget::parse("postgres://app:p%40ss@db.example:5432/attache?sslmode=require")
                .expect("parses");
        assert_eq!(
            target.to_string(),
            "postgres://app@db.example:5432/attache?sslmode=require"
        );
        assert_eq!(target.password.as_deref(), Some("p@ss"));
        assert_eq!(target.redact("FATAL p@ss wrong"), "FATAL *** wrong");

        let target = PgTarget::parse(
            "postgres:///attache?host=/run/postgresql&password=s%26cret&sslmode=disable",
        )
        .expect("parses");
        assert_eq!(
            target.to_string(),
            "postgres:///attache?host=%2Frun%2Fpostgresql&sslmode=disable"
        );
        assert_eq!(target.password.as_deref(), Some("s&cret"));
        let bare = PgTarget::parse("postgres://app@db/attache").expect("parses");
        assert_eq!(bare.to_string(), "postgres://app@db/attache");
        assert_eq!(bare.password, None);
    }

    /// sqlx's own spellings, which the server runs on, reach the tools as libpq's.
    #[test]
    fn the_drivers_parameters_reach_the_tools_in_libpqs_names() {
        let target = PgTarget::parse(
            "postgres://app@db/attache?ssl-mode=require&ssl-ca=/ca.pem&statement-cache-capacity=100\
             &options[search_path]=a%20b&application_name=attache%20backup",
        )
        .expect("parses");
        assert_eq!(
            target.to_string(),
            "postgres://app@db/attache?sslmode=require&sslrootcert=%2Fca.pem\
             &application_name=attache%20backup&options=-c%20search_path%3Da%5C%20b"
        );
    }
}
