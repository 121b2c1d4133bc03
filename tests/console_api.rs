//! The JSON API under `/api/v1/` against the real daemon (`sluice run` as a
//! child process) with mail flowing through it: every route of the OpenAPI
//! document with no token, a wrong one and the right one (and under the
//! `/api/` alias), filters, paging, queue actions checked through the CLI
//! (`sluice queue list --json` over the control socket), reload. And the
//! console's access rules without a browser: login CSRF, wrong password,
//! the login rate limit, session expiry, CSRF on actions.

mod common;
mod console_support;

use std::collections::BTreeSet;
use std::time::Duration;

use console_support::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_needs_the_token_and_answers() {
    let gw = Gateway::start("").await;
    gw.send("a@example.net", &["one@example.org"], "first", false)
        .await;
    gw.wait_deferred(1).await;
    let id = gw.queue_list()[0]["id"].as_str().unwrap().to_string();

    let doc = gw.api("GET", "/api/v1/openapi.json", Some(TOKEN)).await;
    assert_eq!(doc.status, 200, "{}", doc.body);
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase(), path.clone()));
        }
    }
    let names: BTreeSet<String> = routes.iter().map(|(m, p)| format!("{m} {p}")).collect();
    for want in [
        "GET /api/v1/history",
        "GET /api/v1/queue",
        "GET /api/v1/queue/stats",
        "GET /api/v1/queue/{id}",
        "POST /api/v1/queue/{id}/{action}",
        "POST /api/v1/queue/hold",
        "POST /api/v1/queue/release",
        "POST /api/v1/queue/retry",
        "POST /api/v1/queue/delete",
        "POST /api/v1/queue/bounce",
        "POST /api/v1/reload",
        "GET /api/v1/openapi.json",
    ] {
        assert!(
            names.contains(want),
            "{want} not in the document: {names:?}"
        );
    }
    assert_eq!(names.len(), 12, "{names:?}");

    for (method, path) in &routes {
        // Real values for the path parameters; by-filter actions select
        // nothing (a recipient nobody has), so they change nothing.
        let mut p = path.replace("{id}", &id).replace("{action}", "retry");
        let by_filter = method == "POST"
            && ["hold", "release", "retry", "delete", "bounce"]
                .iter()
                .any(|a| p.ends_with(&format!("/queue/{a}")));
        if by_filter {
            p.push_str("?recipient=nobody%40example.org");
        }
        for prefix_path in [p.clone(), p.replacen("/api/v1/", "/api/", 1)] {
            for tok in [None, Some("wrong-token"), Some(&TOKEN[..TOKEN.len() - 1])] {
                let r = gw.api(method, &prefix_path, tok).await;
                assert_eq!(
                    r.status, 401,
                    "{method} {prefix_path} with {tok:?}: {}",
                    r.body
                );
                assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
            }
            let r = gw.api(method, &prefix_path, Some(TOKEN)).await;
            assert_eq!(r.status, 200, "{method} {prefix_path}: {}", r.body);
            assert!(r.header("content-type").unwrap().contains("json"));
            r.json();
        }
    }
    // Routes outside the document are 404s, with the token or not.
    assert_eq!(
        gw.api("GET", "/api/v1/nothing", Some(TOKEN)).await.status,
        404
    );
    assert_eq!(
        gw.api("DELETE", "/api/v1/queue/stats", Some(TOKEN))
            .await
            .status,
        405
    );
    // The reload route ran the daemon's reload.
    let r = gw.api("POST", "/api/v1/reload", Some(TOKEN)).await.json();
    assert!(
        r["reloaded"].as_str().unwrap().starts_with("reloaded:"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filters_and_paging() {
    let gw = Gateway::start("").await;
    for (i, to) in ["p1@example.org", "p2@example.org", "p3@example.org"]
        .iter()
        .enumerate()
    {
        gw.send(
            &format!("s{i}@example.net"),
            &[to],
            &format!("paging {i}"),
            false,
        )
        .await;
    }
    gw.send_with_refusal("mixed@example.net", "p4@example.org")
        .await;
    gw.wait_deferred(4).await;
    let get = |q: String| {
        let gw = &gw;
        async move {
            let r = gw.api("GET", &q, Some(TOKEN)).await;
            assert_eq!(r.status, 200, "{q}: {}", r.body);
            r.json().as_array().cloned().unwrap()
        }
    };
    let all = get("/api/v1/history?limit=1000".into()).await;
    let actions: BTreeSet<&str> = all.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in ["RECEIVED", "REJECT", "DEFER"] {
        assert!(actions.contains(a), "{a} missing: {actions:?}");
    }
    // Oldest first by default, newest first on request.
    let hids: Vec<&str> = all.iter().map(|r| r["hid"].as_str().unwrap()).collect();
    assert!(hids.windows(2).all(|w| w[0] < w[1]));
    let newest = get("/api/v1/history?order=newest&limit=1000".into()).await;
    assert_eq!(newest.first().unwrap()["hid"], all.last().unwrap()["hid"]);
    // Paging newest first: two pages of two, no overlap, in order.
    let page1 = get("/api/v1/history?order=newest&limit=2".into()).await;
    let before = page1[1]["hid"].as_str().unwrap();
    let page2 = get(format!(
        "/api/v1/history?order=newest&limit=2&before={before}"
    ))
    .await;
    assert_eq!(page2.len(), 2);
    assert!(page2[0]["hid"].as_str().unwrap() < before);
    assert_eq!(page2[0]["hid"], newest[2]["hid"]);
    assert_eq!(page2[1]["hid"], newest[3]["hid"]);
    // And oldest first with after.
    let first = get("/api/v1/history?limit=1".into()).await;
    let after = first[0]["hid"].as_str().unwrap();
    let next = get(format!("/api/v1/history?limit=1&after={after}")).await;
    assert_eq!(next[0]["hid"], all[1]["hid"]);
    // Field filters.
    let r = get("/api/v1/history?recipient=p2%40example.org".into()).await;
    assert!(!r.is_empty() && r.iter().all(|v| v["recipient"] == "p2@example.org"));
    let r = get("/api/v1/history?action=reject".into()).await;
    assert_eq!(r.len(), 2, "{r:?}");
    let r = get("/api/v1/history?action=reject&text=no+such+user".into()).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["recipient"], "blocked@example.org");
    let r = get("/api/v1/history?sender=s1%40example.net&action=RECEIVED".into()).await;
    assert_eq!(r.len(), 1);
    let r = get("/api/v1/history?id=paging-2%40client.example.net".into()).await;
    assert!(r.iter().any(|v| v["action"] == "RECEIVED"));
    let r = get("/api/v1/history?domain=elsewhere.example".into()).await;
    assert_eq!(r.len(), 1);
    assert!(get("/api/v1/history?until=1000".into()).await.is_empty());
    assert!(
        get("/api/v1/history?since=2026-01-01T00:00:00Z&until=2026-01-02".into())
            .await
            .is_empty()
    );
    // Mistakes name themselves.
    for (bad, says) in [
        ("/api/v1/history?recipent=x", "recipent"),
        ("/api/v1/history?since=whenever", "whenever"),
        ("/api/v1/history?order=sideways", "sideways"),
        ("/api/v1/queue?state=frozen", "frozen"),
        ("/api/v1/queue?older_than=soon", "soon"),
    ] {
        let r = gw.api("GET", bad, Some(TOKEN)).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(says),
            "{bad}: {}",
            r.body
        );
    }
    // Queue filters and limit.
    let q = gw
        .api(
            "GET",
            "/api/v1/queue?domain=example.org&limit=2",
            Some(TOKEN),
        )
        .await
        .json();
    assert_eq!(q.as_array().unwrap().len(), 2);
    let q = gw
        .api("GET", "/api/v1/queue?sender=s0%40example.net", Some(TOKEN))
        .await
        .json();
    assert_eq!(q.as_array().unwrap().len(), 1);
    let stats = gw
        .api("GET", "/api/v1/queue/stats", Some(TOKEN))
        .await
        .json();
    assert_eq!(stats["entries"], 4);
    assert_eq!(stats["by_state"]["queued"], 4);
    assert_eq!(stats["by_destination"]["example.org"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_actions_change_the_queue_and_write_history() {
    let gw = Gateway::start("").await;
    for to in [
        "h1@example.org",
        "h2@example.org",
        "h3@example.org",
        "h4@example.org",
    ] {
        let from = if to == "h2@example.org" {
            "other@example.net"
        } else {
            "ops@example.net"
        };
        gw.send(from, &[to], to, false).await;
    }
    gw.wait_deferred(4).await;
    let id1 = gw.entry_for("h1@example.org").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // By id: hold, seen by the CLI; an unknown action or entry is refused.
    let r = gw
        .api("POST", &format!("/api/v1/queue/{id1}/hold"), Some(TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["state"], "held");
    assert_eq!(gw.entry_for("h1@example.org").unwrap()["state"], "held");
    let r = gw
        .api("POST", &format!("/api/v1/queue/{id1}/melt"), Some(TOKEN))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("melt"));
    let r = gw
        .api("POST", "/api/v1/queue/00000000deadbeef/hold", Some(TOKEN))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // GET on an action route is not an action.
    assert_eq!(
        gw.api("GET", &format!("/api/v1/queue/{id1}/release"), Some(TOKEN))
            .await
            .status,
        405
    );
    assert_eq!(gw.entry_for("h1@example.org").unwrap()["state"], "held");

    // By filter: hold what one sender sent, then release what is held.
    let r = gw
        .api(
            "POST",
            "/api/v1/queue/hold?sender=other%40example.net",
            Some(TOKEN),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["ids"].as_array().unwrap().len(), 1);
    let held: Vec<Value> = gw
        .queue_list()
        .into_iter()
        .filter(|e| e["state"] == "held")
        .collect();
    assert_eq!(held.len(), 2);
    let r = gw
        .api("POST", "/api/v1/queue/release?state=held", Some(TOKEN))
        .await
        .json();
    assert_eq!(r["ids"].as_array().unwrap().len(), 2, "{r}");
    assert!(gw.queue_list().iter().all(|e| e["state"] != "held"));
    // No filter is refused unless all=true; a bad filter says why.
    let r = gw.api("POST", "/api/v1/queue/hold", Some(TOKEN)).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("all=true"));
    assert_eq!(
        gw.api("POST", "/api/v1/queue/hold?state=frozen", Some(TOKEN))
            .await
            .status,
        400
    );
    // Delete by filter: gone from the queue.
    let r = gw
        .api(
            "POST",
            "/api/v1/queue/delete?recipient=h3%40example.org",
            Some(TOKEN),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(gw.entry_for("h3@example.org").is_none());
    assert_eq!(gw.queue_list().len(), 3);
    // Retry and bounce by id answer with the new state.
    let id4 = gw.entry_for("h4@example.org").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = gw
        .api("POST", &format!("/api/v1/queue/{id4}/retry"), Some(TOKEN))
        .await
        .json();
    assert_eq!(r["state"], "queued");
    let r = gw
        .api("POST", &format!("/api/v1/queue/{id4}/bounce"), Some(TOKEN))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Hold all (all=true).
    let r = gw
        .api("POST", "/api/v1/queue/hold?all=true", Some(TOKEN))
        .await
        .json();
    assert!(!r["ids"].as_array().unwrap().is_empty());

    // Every action is in the history, naming the actor "api".
    let h = gw.history(&[]);
    let by = |action: &str, rcpt: &str| {
        h.iter()
            .filter(|r| r["action"] == action && r["recipient"] == rcpt)
            .map(|r| r["actor"].as_str().unwrap_or("none").to_string())
            .collect::<Vec<_>>()
    };
    // h1: held by id, then again by all=true.
    assert_eq!(by("HOLD", "h1@example.org"), ["api", "api"]);
    assert_eq!(by("RELEASE", "h1@example.org"), ["api"]);
    assert_eq!(
        by("HOLD", "h2@example.org").first().map(|s| s.as_str()),
        Some("api")
    );
    assert_eq!(by("DELETE", "h3@example.org"), ["api"]);
    assert_eq!(by("RETRY", "h4@example.org"), ["api"]);
    assert_eq!(by("BOUNCE", "h4@example.org"), ["api"]);
    let hold = h.iter().find(|r| r["action"] == "HOLD").unwrap();
    assert!(hold["reason"].as_str().unwrap().contains("(api)"));
    // And the CLI's own actions say "cli".
    let id2 = gw.entry_for("h2@example.org").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = gw.cli(&["queue", "release", &id2]);
    assert!(out.status.success(), "{out:?}");
    let h = gw.history(&["--action", "RELEASE", "--recipient", "h2@example.org"]);
    assert_eq!(h.last().unwrap()["actor"], "cli");
}

/// The console without a browser: the refusals, over raw HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_access_rules() {
    let gw = Gateway::start("session_timeout = \"2s\"").await;
    gw.send("c@example.net", &["c1@example.org"], "console rules", false)
        .await;
    gw.wait_deferred(1).await;
    // Before login: every page redirects to the login page, which says nothing.
    for p in [
        "/",
        "/history",
        "/message?id=x",
        "/queue",
        "/charts",
        "/tail",
    ] {
        let r = gw.http("GET", p, &[], None).await;
        assert_eq!(r.status, 303, "{p}");
        assert_eq!(r.header("location").as_deref(), Some("/login"), "{p}");
    }
    assert_eq!(gw.http("GET", "/tail/events", &[], None).await.status, 403);
    let login = gw.http("GET", "/login", &[], None).await;
    assert_eq!(login.status, 200);
    assert!(login.body.contains("type=\"password\""));
    assert!(!login.body.contains("c1@example.org"));
    let pre = cookie_pair(&login, "sluice_login").unwrap();
    let csrf = csrf_of(&login.body).unwrap();
    assert_eq!(pre, format!("sluice_login={csrf}"));

    // Login: without the form's CSRF token, with a wrong one, with a wrong password.
    let post = |cookie: String, body: String| {
        let gw = &gw;
        async move {
            gw.http("POST", "/login", &[("Cookie", &cookie)], Some(&body))
                .await
        }
    };
    let r = post(pre.clone(), format!("password={TOKEN}")).await;
    assert_eq!(r.status, 403, "no csrf");
    let r = post(pre.clone(), format!("password={TOKEN}&csrf=0000")).await;
    assert_eq!(r.status, 403, "wrong csrf");
    let r = post(pre.clone(), format!("password=guess&csrf={csrf}")).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong password"));
    assert!(cookie_pair(&r, "sluice_session").is_none());
    // The fourth attempt is right: a session cookie, HttpOnly and SameSite=Strict.
    let r = post(pre.clone(), format!("password={TOKEN}&csrf={csrf}")).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("sluice_session="))
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let session = set.split(';').next().unwrap().to_string();
    let page = gw
        .http("GET", "/queue", &[("Cookie", &session)], None)
        .await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("c1@example.org"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'self'"));
    let token = csrf_of(&page.body).unwrap();
    let id = gw.queue_list()[0]["id"].as_str().unwrap().to_string();

    // Actions: refused without or with a wrong CSRF token; done with it.
    let act = |body: String| {
        let gw = &gw;
        let session = session.clone();
        async move {
            gw.http("POST", "/queue/act", &[("Cookie", &session)], Some(&body))
                .await
        }
    };
    let r = act(format!("action=hold&id={id}")).await;
    assert_eq!(r.status, 403);
    let r = act(format!("action=hold&id={id}&csrf=bad{token}")).await;
    assert_eq!(r.status, 403);
    assert_eq!(
        gw.queue_list()[0]["state"],
        "queued",
        "refused posts change nothing"
    );
    let r = act(format!("action=hold&id={id}&csrf={token}")).await;
    assert_eq!(r.status, 303);
    assert_eq!(gw.queue_list()[0]["state"], "held");
    let h = gw.history(&["--action", "HOLD"]);
    assert_eq!(h[0]["actor"], "console");

    // The fifth login attempt of this minute is still allowed, the sixth is not.
    let r = post(pre.clone(), format!("password=guess&csrf={csrf}")).await;
    assert_eq!(r.status, 401);
    let r = post(pre.clone(), format!("password={TOKEN}&csrf={csrf}")).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());

    // Idle past session_timeout: the session is gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = gw
        .http("GET", "/queue", &[("Cookie", &session)], None)
        .await;
    assert_eq!(r.status, 303);
    let r = gw
        .http("GET", "/login", &[("Cookie", &session)], None)
        .await;
    assert!(r.body.contains("session has expired"), "{}", r.body);
    let r = act(format!("action=release&id={id}&csrf={token}")).await;
    assert_eq!(r.status, 403);
    assert_eq!(gw.queue_list()[0]["state"], "held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_api_are_off_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("sluice.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\ncontrol_socket = {:?}\n[[listener]]\nid = \"in\"\naddress = \"127.0.0.1:{}\"\n[http]\naddress = \"127.0.0.1:{port}\"\ntoken = \"\"\n",
            dir.path().join("var"),
            dir.path().join("var/control.sock"),
            common::free_port()
        ),
    )
    .unwrap();
    let _child = common::spawn_daemon(&cfg);
    common::wait_listening(port).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = raw(addr, b"GET /login HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("console is off"));
    assert!(!r.body.contains("type=\"password\""));
    let r = raw(addr, b"POST /login HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\npassword=x&").await;
    assert_eq!(r.status, 403);
    let r = raw(
        addr,
        b"GET /api/v1/openapi.json HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(raw(addr, b"GET /queue HTTP/1.1\r\n\r\n").await.status, 303);
}
