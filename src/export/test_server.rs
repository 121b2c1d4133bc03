//! A private clickhouse-server for tests and benches: a config in a temp
//! dir, free loopback ports, killed on drop. Not for production use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Is Debian's clickhouse-server installed?
pub fn available() -> bool {
    std::process::Command::new("clickhouse-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

pub struct ClickHouse {
    dir: PathBuf,
    pub http: u16,
    child: Option<std::process::Child>,
}

impl ClickHouse {
    /// Write a config into `dir` and start the server.
    pub fn start(dir: &Path) -> ClickHouse {
        let http = free_port();
        let tcp = free_port();
        let d = dir.display();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog><console>0</console></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>5368709</mark_cache_size>
</yandex>
"#
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            r#"<?xml version="1.0"?>
<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
"#,
        )
        .unwrap();
        let mut ch = ClickHouse {
            dir: dir.to_path_buf(),
            http,
            child: None,
        };
        ch.spawn();
        ch
    }

    /// (Re)start the server on its data dir and ports; waits until it answers.
    pub fn spawn(&mut self) {
        let child = std::process::Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clickhouse-server (Debian's clickhouse-server package)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sql("SELECT 1").is_ok_and(|s| s.trim() == "1") {
                return;
            }
            assert!(
                Instant::now() < until,
                "clickhouse-server did not answer within 60 s: {}",
                std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run one statement (curl to the HTTP interface).
    pub fn sql(&self, q: &str) -> Result<String, String> {
        let out = std::process::Command::new("curl")
            .args(["-s", "-S", "--max-time", "600", "--data-binary", q])
            .arg(format!("http://127.0.0.1:{}/", self.http))
            .output()
            .map_err(|e| e.to_string())?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !body.contains("DB::Exception") {
            Ok(body)
        } else {
            Err(format!("{body}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}
