//! The injected code against real PostgreSQL and MariaDB servers, started on loopback by
//! `scripts/test.sh` (`scripts/databases.sh`): concurrent pods, failures and timeouts.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::kubelet::{Container, Exit};
use crate::support::free_port;
use crate::{Pods, test_python, test_python_django42};

const LIMIT: Duration = Duration::from_secs(120);
const PODS: usize = 10;

/// Races use all the machine's cores; running two at once would only slow both down.
pub(crate) static ONE_RACE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Postgresql,
    Mysql,
}

#[derive(Clone, Debug)]
pub(crate) struct Server {
    pub engine: Engine,
    pub port: u16,
    pub user: String,
    pub password: String,
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the database servers are started by scripts/test.sh \
             (or: scripts/databases.sh start DIR && source DIR/env)"
        )
    })
}

pub(crate) fn server(engine: Engine) -> Server {
    let port = match engine {
        Engine::Postgresql => env_var("DJANGO_MIGRATE_TEST_POSTGRES_PORT"),
        Engine::Mysql => env_var("DJANGO_MIGRATE_TEST_MARIADB_PORT"),
    };
    Server {
        engine,
        port: port.parse().expect("a port number"),
        user: env_var("DJANGO_MIGRATE_TEST_DB_USER"),
        password: env_var("DJANGO_MIGRATE_TEST_DB_PASSWORD"),
    }
}

static DATABASES: AtomicUsize = AtomicUsize::new(0);

impl Server {
    /// Runs SQL with the server's own command-line client and returns its output.
    pub(crate) fn sql(&self, database: &str, sql: &str) -> String {
        let out = match self.engine {
            Engine::Postgresql => Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    &self.user,
                ])
                .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
                .env("PGPASSWORD", &self.password)
                .output(),
            Engine::Mysql => Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h",
                    "127.0.0.1",
                    "-P",
                    &self.port.to_string(),
                ])
                .args([
                    "-u",
                    &self.user,
                    &format!("-p{}", self.password),
                    "-N",
                    "-B",
                ])
                .args(["-D", database, "-e", sql])
                .output(),
        }
        .expect("the database client runs");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database for one test.
    pub(crate) fn create_database(&self, label: &str) -> String {
        let name = format!(
            "t{}_{}_{label}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let admin_db = match self.engine {
            Engine::Postgresql => "postgres",
            Engine::Mysql => "mysql",
        };
        self.sql(admin_db, &format!("CREATE DATABASE {name}"));
        name
    }

    pub(crate) fn scalar(&self, database: &str, sql: &str) -> i64 {
        let text = self.sql(database, sql);
        text.parse()
            .unwrap_or_else(|_| panic!("{sql} gave {text:?}"))
    }

    fn engine_name(&self) -> &'static str {
        match self.engine {
            Engine::Postgresql => "postgresql",
            Engine::Mysql => "mysql",
        }
    }

    /// The app container's env for `database` on this server, with `port` overridable
    /// for tests that point the pod somewhere else.
    pub(crate) fn pods(
        &self,
        python: std::path::PathBuf,
        database: &str,
        port: u16,
        password: &str,
    ) -> Pods {
        Pods::new(
            python,
            &[
                ("DB_ENGINE", self.engine_name()),
                ("DB_NAME", database),
                ("DB_HOST", "127.0.0.1"),
                ("DB_PORT", &port.to_string()),
                ("DB_USER", &self.user),
                ("DB_PASSWORD", password),
                ("SLOW_MIGRATION_SECONDS", "1"),
            ],
        )
    }

    /// How the user checks that every migration was applied exactly once.
    pub(crate) fn assert_applied_once(&self, database: &str, context: &str) {
        assert_eq!(
            self.scalar(database, "SELECT COUNT(*) FROM catalog_migrationrun"),
            1,
            "{context}: the data migration must run exactly once"
        );
        assert_eq!(
            self.scalar(
                database,
                "SELECT COUNT(*) FROM (SELECT app, name FROM django_migrations \
                 GROUP BY app, name HAVING COUNT(*) > 1) AS d"
            ),
            0,
            "{context}: duplicate django_migrations rows"
        );
        assert_eq!(
            self.scalar(
                database,
                "SELECT COUNT(*) FROM django_migrations WHERE app IN ('catalog', 'orders')"
            ),
            6,
            "{context}: every migration recorded"
        );
    }
}

/// Runs the pod's init containers in order, stopping at the first failure, as the
/// kubelet does.
pub(crate) fn run_pod(containers: &[Container]) -> Vec<(String, Exit, Duration)> {
    let mut exits = Vec::new();
    for c in containers {
        let started = Instant::now();
        let exit = c.run(LIMIT);
        let failed = exit.code != 0;
        exits.push((c.name.clone(), exit, started.elapsed()));
        if failed {
            break;
        }
    }
    exits
}

/// Starts `PODS` pods at once and checks that every one of them succeeded.
fn race(server: &Server, python: std::path::PathBuf, behind: bool) {
    race_through(server, server.port, "direct", python, behind);
}

/// `race`, with the pods connecting to `port` (a pooler in front of `server`, say);
/// returns the database.
pub(crate) fn race_through(
    server: &Server,
    port: u16,
    route: &str,
    python: std::path::PathBuf,
    behind: bool,
) -> String {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let context = format!(
        "{:?} {route}, Django {}, {}",
        server.engine,
        crate::django_version(&python),
        if behind {
            "one release behind"
        } else {
            "fresh database"
        }
    );
    let database = server.create_database(if behind { "behind" } else { "fresh" });
    let pods = server.pods(python.clone(), &database, port, &server.password);
    if behind {
        // The previous release: everything but the data migration and what follows it.
        for (app, target) in [("catalog", "0002"), ("orders", "0002")] {
            let out = Command::new(&python)
                .args(["manage.py", "migrate", app, target, "-v", "0"])
                .current_dir(crate::repo().join("tests/django"))
                .envs(pods.env.iter().cloned())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            server.scalar(&database, "SELECT COUNT(*) FROM django_migrations"),
            4
        );
    }
    let containers = pods.containers(&[], &[]);
    let handles: Vec<_> = (0..PODS)
        .map(|i| {
            let pod = pods.pod(&containers, i);
            thread::spawn(move || run_pod(&pod))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut appliers = 0;
    for (i, exits) in results.iter().enumerate() {
        for (name, exit, _) in exits {
            assert_eq!(exit.code, 0, "{context}: pod {i} {name}:\n{}", exit.logs);
        }
        assert_eq!(exits.len(), 2, "{context}: pod {i}");
        let summary = pods.summary(Some(i));
        if summary["result"] == "applied" {
            appliers += 1;
        } else {
            assert!(
                ["applied-by-other-pod", "nothing-pending"]
                    .contains(&summary["result"].as_str().unwrap()),
                "{context}: pod {i}: {summary}"
            );
        }
    }
    assert_eq!(
        appliers, 1,
        "{context}: exactly one pod applies the migrations"
    );
    server.assert_applied_once(&database, &context);
    let slowest = results
        .iter()
        .map(|r| r.iter().map(|(_, _, d)| *d).sum::<Duration>())
        .max()
        .unwrap();
    eprintln!("race {context}: {PODS} pods all exited 0, slowest pod {slowest:.1?}");
    database
}

/// The same checks catch what the injection prevents: ten pods that each run plain
/// `manage.py migrate` on a database one release behind.
#[test]
fn the_checks_catch_naive_concurrent_migrate() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = server(Engine::Postgresql);
    let database = s.create_database("naive");
    let pods = s.pods(test_python(), &database, s.port, &s.password);
    let naive = Container {
        name: "naive-migrate".into(),
        argv: vec![
            test_python().to_string_lossy().into_owned(),
            "manage.py".into(),
            "migrate".into(),
            "--noinput".into(),
        ],
        env: pods.env.iter().cloned().collect(),
        working_dir: crate::repo().join("tests/django"),
        mounts: Vec::new(),
        volumes: Default::default(),
    };
    let first = naive.run(LIMIT);
    assert_eq!(first.code, 0, "{}", first.logs);
    s.sql(&database, "DELETE FROM django_migrations WHERE name IN ('0003_backfill_slugs', '0003_order_reference')");
    s.sql(&database, "DELETE FROM catalog_migrationrun");
    s.sql(&database, "ALTER TABLE orders_order DROP COLUMN reference");
    let handles: Vec<_> = (0..PODS)
        .map(|_| {
            let c = naive.clone();
            thread::spawn(move || c.run(LIMIT))
        })
        .collect();
    let failed = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|e| e.code != 0)
        .count();
    let runs = s.scalar(&database, "SELECT COUNT(*) FROM catalog_migrationrun");
    let duplicates = s.scalar(
        &database,
        "SELECT COUNT(*) FROM (SELECT app, name FROM django_migrations \
         GROUP BY app, name HAVING COUNT(*) > 1) AS d",
    );
    eprintln!(
        "naive migrate, {PODS} pods: {failed} failed, data migration ran {runs} times, \
         {duplicates} duplicated django_migrations rows"
    );
    assert!(
        failed > 0 || runs != 1 || duplicates > 0,
        "ten naive pods left no trace: the race checks would not notice a missing lock"
    );
}

#[test]
fn ten_pods_postgresql() {
    let s = server(Engine::Postgresql);
    race(&s, test_python(), false);
    race(&s, test_python(), true);
}

#[test]
fn ten_pods_mariadb() {
    let s = server(Engine::Mysql);
    race(&s, test_python(), false);
    race(&s, test_python(), true);
}

#[test]
fn ten_pods_postgresql_django42() {
    let s = server(Engine::Postgresql);
    race(&s, test_python_django42(), false);
    race(&s, test_python_django42(), true);
}

#[test]
fn ten_pods_mariadb_django42() {
    let s = server(Engine::Mysql);
    race(&s, test_python_django42(), false);
    race(&s, test_python_django42(), true);
}

/// Forwards every connection on `listener` to `target`, like a database that came up.
fn forward(listener: TcpListener, target: SocketAddr) {
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(upstream) = TcpStream::connect(target) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                (upstream, client),
            ] {
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

#[test]
fn wait_for_db_succeeds_when_the_database_comes_up_10s_later() {
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let database = s.create_database("late");
        let port = free_port();
        let pods = s.pods(test_python(), &database, port, &s.password);
        let wait = &pods.containers(&[], &[("wait-timeout", "60")])[1];
        let started = Instant::now();
        let child = wait.start();
        thread::sleep(Duration::from_secs(10));
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is still free");
        forward(listener, SocketAddr::from(([127, 0, 0, 1], s.port)));
        let exit = crate::kubelet::wait(&wait.name, child, LIMIT);
        assert_eq!(exit.code, 0, "{engine:?}: {}", exit.logs);
        assert!(exit.logs.contains("not reachable"), "{}", exit.logs);
        assert!(exit.logs.contains("is reachable"), "{}", exit.logs);
        eprintln!(
            "{engine:?}: database up after 10 s, wait-for-db done after {:.1?}",
            started.elapsed()
        );
    }
}

#[test]
fn wrong_password_exits_3_at_once() {
    for (engine, needle) in [
        (Engine::Postgresql, "password authentication failed"),
        (Engine::Mysql, "Access denied"),
    ] {
        let s = server(engine);
        let database = s.create_database("password");
        let pods = s.pods(test_python(), &database, s.port, "not-the-password");
        let wait = &pods.containers(&[], &[])[1];
        let started = Instant::now();
        let exit = wait.run(LIMIT);
        let took = started.elapsed();
        assert_eq!(exit.code, 3, "{engine:?}: {}", exit.logs);
        let summary = pods.summary(None);
        assert_eq!(summary["result"], "credentials-rejected", "{summary}");
        assert_eq!(summary["phase"], "database", "{summary}");
        let message = summary["message"].as_str().unwrap();
        assert!(message.contains("rejected the credentials"), "{summary}");
        assert!(message.contains(needle), "{summary}");
        // At once: one attempt, no retry (a wall-clock bound would only measure the
        // machine's load; the wait timeout is 300 s).
        assert!(
            !exit.logs.contains("retrying"),
            "{engine:?}: retried rejected credentials: {}",
            exit.logs
        );
        assert!(took < Duration::from_secs(60), "{engine:?}: took {took:?}");
        eprintln!("{engine:?}: wrong password -> exit 3 after {took:.1?}");
    }
}

#[test]
fn nothing_listening_exits_1_at_the_timeout() {
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let pods = s.pods(test_python(), "unused", free_port(), &s.password);
        let wait = &pods.containers(&[], &[("wait-timeout", "3")])[1];
        let started = Instant::now();
        let exit = wait.run(LIMIT);
        let took = started.elapsed();
        assert_eq!(exit.code, 1, "{engine:?}: {}", exit.logs);
        let summary = pods.summary(None);
        assert_eq!(summary["phase"], "database", "{summary}");
        assert!(
            summary["message"]
                .as_str()
                .unwrap()
                .contains("gave up after"),
            "{summary}"
        );
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(10),
            "{took:?}"
        );
        eprintln!("{engine:?}: nothing listening, wait-timeout 3 -> exit 1 after {took:.1?}");
    }
}

#[test]
fn a_server_that_never_answers_cannot_hang_the_pod() {
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        // Accepts connections and never sends a byte.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            let mut held = Vec::new();
            for c in listener.incoming().flatten() {
                held.push(c);
            }
        });
        let pods = s.pods(test_python(), "unused", port, &s.password);
        let wait = &pods.containers(&[], &[("wait-timeout", "3")])[1];
        let started = Instant::now();
        let exit = wait.run(LIMIT);
        let took = started.elapsed();
        assert_eq!(exit.code, 1, "{engine:?}: {}", exit.logs);
        assert!(took < Duration::from_secs(20), "{engine:?}: took {took:?}");
        eprintln!("{engine:?}: silent server, wait-timeout 3 -> exit 1 after {took:.1?}");
    }
}

#[test]
fn a_failing_migration_exits_2_and_names_it() {
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let database = s.create_database("broken");
        let pods = s.pods(test_python(), &database, s.port, &s.password);
        let containers = pods.containers(&[("BROKEN_MIGRATION", "1")], &[]);
        let exits = run_pod(&containers);
        let (name, exit, _) = exits.last().unwrap();
        assert_eq!(name, "django-migrate");
        assert_eq!(exit.code, 2, "{engine:?}: {}", exit.logs);
        let summary = pods.summary(None);
        assert_eq!(summary["result"], "failed", "{summary}");
        assert_eq!(
            summary["failed_migration"], "broken.0001_explode",
            "{summary}"
        );
        assert!(
            summary["message"].as_str().unwrap().contains(
                "migration broken.0001_explode failed: RuntimeError: this migration fails on purpose"
            ),
            "{summary}"
        );
    }
}

#[test]
fn wait_mode_pods_finish_once_a_migrate_pod_applied_everything() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let database = s.create_database("waitmode");
        let workers = s.pods(test_python(), &database, s.port, &s.password);
        let web = s.pods(test_python(), &database, s.port, &s.password);
        let worker_containers = workers.containers(&[], &[("mode", "wait")]);
        assert_eq!(worker_containers[1].name, "django-wait-for-migrations");
        let waiting: Vec<_> = (0..3)
            .map(|i| {
                let pod = workers.pod(&worker_containers, i);
                thread::spawn(move || run_pod(&pod))
            })
            .collect();
        thread::sleep(Duration::from_secs(3));
        let migrate = web.containers(&[], &[]);
        for (name, exit, _) in run_pod(&migrate) {
            assert_eq!(exit.code, 0, "{engine:?} {name}: {}", exit.logs);
        }
        for (i, w) in waiting.into_iter().enumerate() {
            for (name, exit, _) in w.join().unwrap() {
                assert_eq!(exit.code, 0, "{engine:?} worker {i} {name}: {}", exit.logs);
            }
            let summary = workers.summary(Some(i));
            assert_eq!(summary["result"], "applied-by-other-pod", "{summary}");
            assert_eq!(summary["mode"], "wait", "{summary}");
        }
        s.assert_applied_once(&database, &format!("{engine:?} wait mode"));
    }
}

#[test]
fn nothing_pending_costs_about_one_django_start() {
    let _one = ONE_RACE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for engine in [Engine::Postgresql, Engine::Mysql] {
        let s = server(engine);
        let database = s.create_database("uptodate");
        let pods = s.pods(test_python(), &database, s.port, &s.password);
        let containers = pods.containers(&[], &[]);
        for (name, exit, _) in run_pod(&containers) {
            assert_eq!(exit.code, 0, "{name}: {}", exit.logs);
        }
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let exit = containers[1].run(LIMIT);
            times.push(started.elapsed());
            assert_eq!(exit.code, 0, "{}", exit.logs);
            assert_eq!(
                pods.summary(None)["result"],
                "nothing-pending",
                "{}",
                exit.logs
            );
        }
        // Django's own start-up, for comparison.
        let started = Instant::now();
        let out = Command::new(test_python())
            .args(["manage.py", "check", "-v", "0"])
            .current_dir(crate::repo().join("tests/django"))
            .envs(pods.env.iter().cloned())
            .output()
            .unwrap();
        assert!(out.status.success());
        let check = started.elapsed();
        eprintln!(
            "{engine:?}: migrate with nothing pending took {times:.2?}; `manage.py check` takes {check:.2?}"
        );
    }
}
