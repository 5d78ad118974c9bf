//! The web console (issue 16) in a real browser: Debian's Chromium driven headless through
//! ChromeDriver (WebDriver, fantoccini), against a real server. Plus the console's HTTP
//! contract checked without a browser: security headers, cookie flags, CSRF and rights.

use std::{net::TcpListener, path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use usm_tests::TestServer;

/// A ChromeDriver process on a free loopback port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn driver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "ChromeDriver is not installed: `apt-get install chromium chromium-driver` (.ci/run does)",
        );
    let port = free_port();
    let child = std::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ChromeDriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    let status = format!("{}/status", driver.url);
    for _ in 0..200 {
        if reqwest::get(&status)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ChromeDriver did not answer on {status}");
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                                      "--disable-gpu", "--window-size=1280,1000"]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    capabilities.insert("goog:chromeOptions".into(), options);
    // WebDriver on loopback speaks plain HTTP.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Where the test leaves its screenshots (README shows how to look at them).
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("a screenshot directory");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("saved");
}

/// Waits for `css` on the page; when it does not come, fails with what the page says.
async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(error) => {
            let said = match browser.find(Locator::Css("main")).await {
                Ok(main) => main.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let url = browser
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            panic!("{css} is not on {url} ({error}); the page says: {said}");
        }
    }
}

async fn text_of(browser: &Client, css: &str) -> String {
    wait_for(browser, css).await.text().await.expect("its text")
}

async fn type_into(browser: &Client, css: &str, text: &str) {
    let element = wait_for(browser, css).await;
    element.clear().await.expect("cleared");
    element.send_keys(text).await.expect("typed");
}

async fn click(browser: &Client, css: &str) {
    wait_for(browser, css)
        .await
        .click()
        .await
        .unwrap_or_else(|error| panic!("{css} clicks: {error}"));
}

/// Clicks a submit button and waits until the browser has left the page for the answer.
async fn submit(browser: &Client, css: &str) {
    let page = browser.find(Locator::Css("html")).await.expect("a page");
    click(browser, css).await;
    for _ in 0..400 {
        if page.tag_name().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("clicking {css} did not load a page");
}

/// Fails when a visible form field of the page has no label.
async fn assert_labelled(browser: &Client) {
    let unlabelled = browser
        .execute(
            "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]\
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))\
             .map(e => e.name)",
            vec![],
        )
        .await
        .unwrap();
    let url = browser.current_url().await.unwrap();
    assert_eq!(unlabelled, json!([]), "fields without a label on {url}");
}

async fn path_of(browser: &Client) -> String {
    browser
        .current_url()
        .await
        .expect("a URL")
        .path()
        .to_owned()
}

async fn sign_in(browser: &Client, base: &str, token: &str) {
    browser
        .goto(&format!("{base}/ui/login"))
        .await
        .expect("the sign-in page");
    type_into(browser, "#token", token).await;
    submit(browser, "form[action='/ui/login'] button[type=submit]").await;
    wait_for(browser, "form.signout").await;
}

async fn sign_out(browser: &Client) {
    submit(browser, "form.signout button").await;
    wait_for(browser, "#token").await;
}

async fn person(server: &TestServer, id: &str, role: &str) -> String {
    server
        .person_with_token(
            json!({"id": id, "name": format!("{id} Lee"), "email": format!("{id}@example.org"),
                   "domains": ["it"]}),
            role,
        )
        .await
}

#[actix_web::test]
async fn agents_requesters_and_admins_work_through_the_console_in_a_browser() {
    let server = TestServer::start_with(|config| {
        config.bundled_modules = true;
        config.default_agreements = true;
    })
    .unwrap();
    let agent = person(&server, "ann", "agent").await;
    let requester = person(&server, "rob", "requester").await;
    let item = server
        .post(
            "/api/v1/catalog/items",
            &json!({"id": "monitor", "domain": "it", "name": "A second monitor",
                    "description": "A 27-inch monitor on your desk",
                    "form": {"type": "object", "required": ["size"], "additionalProperties": false,
                             "properties": {"size": {"type": "string", "enum": ["24", "27"], "title": "Size"},
                                            "note": {"type": "string", "title": "Note"}}},
                    "approval": {"by": "none"},
                    "fulfilment": [{"title": "Deliver a {{ variables.size }}-inch monitor",
                                    "domain": "it", "group": "it-workplace"}]}),
        )
        .await
        .unwrap();
    assert_eq!(item.status, StatusCode::CREATED, "{}", item.body);
    let driver = driver().await;
    let browser = browser(&driver).await;
    let base = server.base.clone();

    // A page asked for without a session leads to the sign-in form, and back after it.
    browser
        .goto(&format!("{base}/ui/records?sort=-created_at"))
        .await
        .unwrap();
    assert_eq!(path_of(&browser).await, "/ui/login");
    screenshot(&browser, "sign-in").await;
    assert_labelled(&browser).await;
    // With the keyboard alone: the token, then Enter.
    let page = browser.find(Locator::Css("html")).await.unwrap();
    type_into(&browser, "#token", &format!("{agent}\u{E007}")).await;
    for _ in 0..400 {
        if page.tag_name().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    text_of(&browser, "form.signout .who").await;
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), "/ui/records");
    assert_eq!(
        url.query(),
        Some("sort=-created_at"),
        "back where the agent was going"
    );

    // Create an incident from the form generated from the kind's schema.
    browser
        .goto(&format!("{base}/ui/new?kind=incident&domain=it"))
        .await
        .unwrap();
    type_into(&browser, "#title", "Printer on floor 3 jams").await;
    browser
        .find(Locator::Css("select[name='field.impact']"))
        .await
        .expect("an impact select, from the schema's enum")
        .select_by_value("high")
        .await
        .unwrap();
    browser
        .find(Locator::Css("select[name='field.urgency']"))
        .await
        .unwrap()
        .select_by_value("high")
        .await
        .unwrap();
    screenshot(&browser, "create-incident").await;
    assert_labelled(&browser).await;
    submit(&browser, "form[action='/ui/records'] button[type=submit]").await;
    let id = text_of(&browser, "h1 .id").await;
    assert!(id.starts_with("INC-"), "{id}");
    let stored = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(stored.body["title"], "Printer on floor 3 jams");
    assert_eq!(stored.body["fields"]["impact"], "high");
    assert_eq!(
        stored.body["created_by"], "ann",
        "created as the signed-in agent"
    );

    // The queue lists it, with its count.
    browser
        .goto(&format!("{base}/ui/records?domain=it&kind=incident"))
        .await
        .unwrap();
    let listed = text_of(&browser, "table tbody").await;
    assert!(listed.contains(&id), "{listed}");
    screenshot(&browser, "queue").await;
    assert_labelled(&browser).await;

    // Reply publicly, then write an internal note.
    browser
        .goto(&format!("{base}/ui/records/{id}"))
        .await
        .unwrap();
    type_into(&browser, "#reply", "We are on our way.").await;
    submit(&browser, "#conversation button[type=submit]").await;
    type_into(&browser, "#reply", "Toner smells burnt.").await;
    click(&browser, "input[name=visibility][value=internal]").await;
    submit(&browser, "#conversation button[type=submit]").await;
    let conversation = text_of(&browser, "ol.conversation").await;
    assert!(
        conversation.contains("We are on our way."),
        "{conversation}"
    );
    assert!(
        conversation.contains("Toner smells burnt."),
        "{conversation}"
    );
    let comments = server
        .get(&format!("/api/v1/records/{id}/comments"))
        .await
        .unwrap();
    let visibilities: Vec<&str> = comments.body["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["visibility"].as_str().unwrap())
        .collect();
    assert_eq!(visibilities, ["public", "internal"]);

    // Attach a file through the upload form.
    let upload = std::env::temp_dir().join(format!("usm-console-{}.txt", std::process::id()));
    std::fs::write(&upload, "paper jam log\n").unwrap();
    browser
        .find(Locator::Css("input#file"))
        .await
        .unwrap()
        .send_keys(upload.to_str().unwrap())
        .await
        .unwrap();
    submit(
        &browser,
        "form[enctype='multipart/form-data'] button[type=submit]",
    )
    .await;
    let attachments = text_of(&browser, "ul.attachments").await;
    let name = upload.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(attachments.contains(&name), "{attachments}");
    let stored = server
        .get(&format!("/api/v1/records/{id}/attachments"))
        .await
        .unwrap();
    assert_eq!(stored.body["attachments"][0]["size"], 14, "{}", stored.body);
    let _ = std::fs::remove_file(&upload);

    // Move it through its lifecycle with the state buttons the lifecycle allows.
    type_into(&browser, "#move-comment", "Taking it").await;
    submit(&browser, "button[name=to][value=in_progress]").await;
    wait_for(&browser, "button[name=to][value=resolved]").await;
    assert_eq!(text_of(&browser, "#state").await, "in_progress");
    // ISO/IEC 20000 wants the category and resolution data before resolving: set in the same
    // write as the move.
    click(&browser, "details.edit summary").await;
    type_into(&browser, "input[name='field.category']", "hardware").await;
    type_into(&browser, "input[name='field.resolution_code']", "replaced").await;
    type_into(
        &browser,
        "textarea[name='field.resolution']",
        "New toner cartridge",
    )
    .await;
    submit(&browser, "button[name=to][value=resolved]").await;
    wait_for(&browser, "button[name=to][value=closed]").await;
    assert_eq!(text_of(&browser, "#state").await, "resolved");
    let resolved = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(resolved.body["fields"]["resolution_code"], "replaced");
    assert_eq!(resolved.body["fields"]["category"], "hardware");

    // The agreement in force gives it SLA clocks; an approval is recorded from the page.
    let clocks = text_of(&browser, "table.clocks").await;
    assert!(clocks.contains("Resolution"), "{clocks}");
    type_into(&browser, "#approval-comment", "Fine by me").await;
    submit(&browser, "button[name=decision][value=approve]").await;
    let approvals = text_of(&browser, "#approvals-h + ul").await;
    assert!(approvals.contains("ann"), "{approvals}");

    // The history shows each write's pipeline trace: module, step, outcome.
    click(&browser, "#v1 details.trace summary").await;
    let trace = text_of(&browser, "#v1 details.trace table").await;
    assert!(
        trace.contains("itil4"),
        "the ITIL 4 module's steps ran on the create: {trace}"
    );
    let history = server
        .get(&format!("/api/v1/records/{id}/history"))
        .await
        .unwrap();
    let first_step = &history.body["entries"][0]["steps"][0];
    assert!(
        trace.contains(first_step["step"].as_str().unwrap()),
        "{trace} names {first_step}"
    );
    screenshot(&browser, "record").await;
    assert_labelled(&browser).await;

    // A form whose CSRF token was taken out is refused.
    browser
        .execute(
            "document.querySelector('#conversation input[name=csrf]').remove()",
            vec![],
        )
        .await
        .unwrap();
    type_into(&browser, "#reply", "This must not arrive").await;
    submit(&browser, "#conversation button[type=submit]").await;
    assert_eq!(
        browser
            .find(Locator::Css("[data-code]"))
            .await
            .expect("an error page")
            .attr("data-code")
            .await
            .unwrap()
            .as_deref(),
        Some("csrf_invalid")
    );
    let after = server
        .get(&format!("/api/v1/records/{id}/comments"))
        .await
        .unwrap();
    assert_eq!(after.body["comments"].as_array().unwrap().len(), 2);
    browser
        .goto(&format!("{base}/ui/records/{id}"))
        .await
        .unwrap();
    sign_out(&browser).await;

    // Signed out, the cookie no longer opens a page.
    browser
        .goto(&format!("{base}/ui/records/{id}"))
        .await
        .unwrap();
    assert_eq!(path_of(&browser).await, "/ui/login");

    // An admin disables a module in one domain and enables it again.
    sign_in(&browser, &base, usm_tests::ADMIN_TOKEN).await;
    browser
        .goto(&format!("{base}/ui/admin/modules"))
        .await
        .unwrap();
    screenshot(&browser, "modules").await;
    assert_labelled(&browser).await;
    submit(&browser, "button[data-module=iso20000][data-domain=it].on").await;
    wait_for(&browser, "button[data-module=iso20000][data-domain=it].off").await;
    let module = server.get("/api/v1/modules/iso20000").await.unwrap();
    assert!(
        !module.body["domains"]
            .as_array()
            .unwrap()
            .contains(&json!("it")),
        "{}",
        module.body
    );
    submit(&browser, "button[data-module=iso20000][data-domain=it].off").await;
    wait_for(&browser, "button[data-module=iso20000][data-domain=it].on").await;
    let module = server.get("/api/v1/modules/iso20000").await.unwrap();
    assert!(
        module.body["domains"]
            .as_array()
            .unwrap()
            .contains(&json!("it")),
        "{}",
        module.body
    );
    browser.goto(&format!("{base}/ui/kpis")).await.unwrap();
    wait_for(&browser, "#chart_created svg").await;
    screenshot(&browser, "kpis").await;
    assert_labelled(&browser).await;
    sign_out(&browser).await;

    // A requester orders from the catalog through the portal's generated form.
    sign_in(&browser, &base, &requester).await;
    browser.goto(&format!("{base}/ui/portal")).await.unwrap();
    assert!(
        browser
            .find_all(Locator::Css("a[href='/ui/records']"))
            .await
            .unwrap()
            .is_empty(),
        "a requester has no queues"
    );
    submit(&browser, "a[href='/ui/portal/items/monitor']").await;
    browser
        .find(Locator::Css("select[name='field.size']"))
        .await
        .unwrap()
        .select_by_value("27")
        .await
        .unwrap();
    type_into(&browser, "input[name='field.note']", "Left of the window").await;
    screenshot(&browser, "order").await;
    assert_labelled(&browser).await;
    submit(
        &browser,
        "form[action='/ui/portal/items/monitor'] button[type=submit]",
    )
    .await;
    let request = text_of(&browser, "h1 .id").await;
    let ordered = server
        .get(&format!("/api/v1/records/{request}"))
        .await
        .unwrap();
    assert_eq!(ordered.status, StatusCode::OK, "{}", ordered.body);
    assert_eq!(ordered.body["created_by"], "rob");
    let ordered_text = ordered.body.to_string();
    assert!(
        ordered_text.contains("Left of the window"),
        "{ordered_text}"
    );
    // The requester does not see the agent's incident: the console has the token's rights.
    browser
        .goto(&format!("{base}/ui/records/{id}"))
        .await
        .unwrap();
    assert_eq!(
        browser
            .find(Locator::Css("[data-code]"))
            .await
            .expect("an error page")
            .attr("data-code")
            .await
            .unwrap()
            .as_deref(),
        Some("record_not_found")
    );
    browser.goto(&format!("{base}/ui/portal")).await.unwrap();
    let mine = text_of(&browser, "#mine-h + ul").await;
    assert!(mine.contains(&request), "{mine}");
    screenshot(&browser, "portal").await;
    assert_labelled(&browser).await;

    // At phone width the pages fit the screen: nothing scrolls sideways but the wide tables,
    // each in its own scrolling box.
    browser.set_window_size(390, 844).await.unwrap();
    for path in ["/ui/portal", &format!("/ui/records/{request}")] {
        browser.goto(&format!("{base}{path}")).await.unwrap();
        let fits = browser
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth",
                vec![],
            )
            .await
            .unwrap();
        let wide = browser
            .execute(
                "return [...document.querySelectorAll('body *')]\
                 .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)\
                 .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            fits,
            json!(true),
            "{path} fits a phone's width; too wide: {wide}"
        );
    }
    screenshot(&browser, "phone-record").await;

    browser.close().await.unwrap();
}

#[actix_web::test]
async fn an_expired_session_sends_the_browser_back_to_sign_in() {
    let server = TestServer::start_with(|config| config.console_session_secs = 2).unwrap();
    let driver = driver().await;
    let browser = browser(&driver).await;
    let base = server.base.clone();
    sign_in(&browser, &base, usm_tests::ADMIN_TOKEN).await;
    // Sessions end by the clock: wait past the end, then any page is refused.
    tokio::time::sleep(Duration::from_secs(3)).await;
    browser.goto(&format!("{base}/ui/records")).await.unwrap();
    assert_eq!(path_of(&browser).await, "/ui/login");
    let notice = text_of(&browser, "p.notice").await;
    assert!(notice.contains("expired"), "{notice}");
    browser.close().await.unwrap();
}

/// A client that keeps cookies and does not follow redirects, like a browser seen from HTTP.
fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A page's HTML, as a client with the session's cookie gets it.
async fn page_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in the page"))
        + marker.len();
    html[start..][..html[start..].find('"').unwrap()].to_owned()
}

async fn signed_in(
    server: &TestServer,
    client: &reqwest::Client,
    token: &str,
) -> reqwest::Response {
    let form = page_text(client, &format!("{}/ui/login", server.base)).await;
    client
        .post(format!("{}/ui/login", server.base))
        .form(&[("csrf", hidden(&form, "csrf").as_str()), ("token", token)])
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn console_pages_carry_strict_cookies_a_policy_without_inline_script_and_csrf_checks() {
    let server = TestServer::start().unwrap();
    let client = cookie_client();

    let login = client
        .get(format!("{}/ui/login", server.base))
        .send()
        .await
        .unwrap();
    let policy = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(login.headers()["x-frame-options"], "DENY");
    assert_eq!(login.headers()[header::CACHE_CONTROL], "no-store");
    let html = login.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    assert!(!html.contains(" style="), "no inline style");

    // A token in the URL signs nobody in.
    let in_url = client
        .get(format!(
            "{}/ui/login?token={}",
            server.base,
            usm_tests::ADMIN_TOKEN
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(in_url.status(), StatusCode::OK);
    assert!(
        in_url
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("usm_session="))
    );

    // The sign-in form without its CSRF value is refused; a wrong token is refused.
    let no_csrf = client
        .post(format!("{}/ui/login", server.base))
        .form(&[("token", usm_tests::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(no_csrf.status(), StatusCode::FORBIDDEN);
    let wrong = signed_in(&server, &client, "not-a-token").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let signed = signed_in(&server, &client, usm_tests::ADMIN_TOKEN).await;
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let session = signed
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("usm_session="))
        .expect("a session cookie");
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(session.contains("Path=/ui"), "{session}");
    assert!(!session.contains("Secure"), "plain HTTP: {session}");
    assert!(
        !session.contains(usm_tests::ADMIN_TOKEN),
        "the token is not in the cookie"
    );

    // Over TLS (as a proxy in front says) the cookie is Secure.
    let form = page_text(&client, &format!("{}/ui/login", server.base)).await;
    let proxied = cookie_client()
        .post(format!("{}/ui/login", server.base))
        .header("x-forwarded-proto", "https")
        .header(
            header::COOKIE,
            format!("usm_login={}", hidden(&form, "csrf")),
        )
        .form(&[
            ("csrf", hidden(&form, "csrf").as_str()),
            ("token", usm_tests::ADMIN_TOKEN),
        ])
        .send()
        .await
        .unwrap();
    let secure = proxied
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("usm_session="))
        .expect("a session cookie");
    assert!(secure.contains("Secure"), "{secure}");

    // A state change without the session's CSRF token: 403, nothing written.
    let made = server
        .create(json!({"kind": "incident", "title": "Mail is slow"}))
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap();
    let refused = client
        .post(format!("{}/ui/records/{id}/transition", server.base))
        .form(&[("to", "in_progress")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let page = client
        .get(format!("{}/ui/records/{id}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    let csrf = hidden(&page, "csrf");
    let wrong_csrf = client
        .post(format!("{}/ui/records/{id}/transition", server.base))
        .form(&[
            ("to", "in_progress"),
            ("csrf", "x".repeat(csrf.len()).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_csrf.status(), StatusCode::FORBIDDEN);
    let record = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(record.body["state"], "new", "nothing was written");
    let moved = client
        .post(format!("{}/ui/records/{id}/transition", server.base))
        .form(&[
            ("to", "in_progress"),
            ("csrf", csrf.as_str()),
            ("comment", "on it"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), StatusCode::SEE_OTHER);
    let record = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(record.body["state"], "in_progress");

    // An upload form without the CSRF field, or with a wrong one, stores nothing.
    for csrf_part in [None, Some("x".repeat(csrf.len()))] {
        let mut form = reqwest::multipart::Form::new();
        if let Some(value) = csrf_part {
            form = form.text("csrf", value);
        }
        let form = form.part(
            "file",
            reqwest::multipart::Part::bytes(b"log".to_vec()).file_name("log.txt"),
        );
        let refused = client
            .post(format!("{}/ui/records/{id}/attachments", server.base))
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    let none = server
        .get(&format!("/api/v1/records/{id}/attachments"))
        .await
        .unwrap();
    assert_eq!(none.body["attachments"], json!([]), "{}", none.body);

    // A transition the lifecycle refuses is a page with the API's code.
    let illegal = client
        .post(format!("{}/ui/records/{id}/transition", server.base))
        .form(&[("to", "new"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(illegal.status(), StatusCode::CONFLICT);
    assert!(illegal.text().await.unwrap().contains("illegal_transition"));
}

#[actix_web::test]
async fn revoking_the_token_ends_its_console_sessions() {
    let server = TestServer::start().unwrap();
    let made = server
        .post(
            "/api/v1/tokens",
            &json!({"name": "desk", "roles": ["agent"]}),
        )
        .await
        .unwrap();
    let (token_id, secret) = (
        made.body["id"].as_str().unwrap().to_owned(),
        made.body["token"].as_str().unwrap().to_owned(),
    );
    let client = cookie_client();
    assert_eq!(
        signed_in(&server, &client, &secret).await.status(),
        StatusCode::SEE_OTHER
    );
    let queue = client
        .get(format!("{}/ui/records", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(queue.status(), StatusCode::OK);
    let revoked = server
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{token_id}"),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    let after = client
        .get(format!("{}/ui/records", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER);
    assert!(
        after.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/ui/login"),
        "back to sign-in"
    );
}

#[actix_web::test]
async fn a_domain_admin_administers_only_its_domains_through_the_console() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    let hr_admin = server
        .token("hr-admin", &["admin"], Some(&["hr"]))
        .await
        .unwrap();
    let client = cookie_client();
    signed_in(&server, &client, &hr_admin).await;
    let page = client
        .get(format!("{}/ui/admin/modules", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(!page.contains("data-domain=\"it\""), "only its own domains");
    let csrf = hidden(&page, "csrf");
    let refused = client
        .post(format!("{}/ui/admin/modules/itil4/disable", server.base))
        .form(&[("domain", "it"), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let module: Value = server.get("/api/v1/modules/itil4").await.unwrap().body;
    assert!(module["domains"].as_array().unwrap().contains(&json!("it")));
}

#[actix_web::test]
async fn a_requester_confirms_a_resolution_and_an_agent_sees_saved_queues_with_counts() {
    let server = TestServer::start().unwrap();
    let requester = person(&server, "rob", "requester").await;
    let agent = person(&server, "ann", "agent").await;
    let made = server
        .act(
            &requester,
            Method::POST,
            "/api/v1/records",
            Some(json!({"kind": "incident", "domain": "it", "title": "VPN drops"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.body);
    let id = made.body["id"].as_str().unwrap().to_owned();
    server.transition(&id, "in_progress").await.unwrap();
    server.transition(&id, "resolved").await.unwrap();

    let client = cookie_client();
    signed_in(&server, &client, &requester).await;
    let page = page_text(&client, &format!("{}/ui/records/{id}", server.base)).await;
    assert!(page.contains("/confirmation"), "the requester is asked");
    assert!(
        !page.contains("id=\"change\""),
        "a requester has no state buttons"
    );
    let accepted = client
        .post(format!("{}/ui/records/{id}/confirmation", server.base))
        .form(&[("accept", "true"), ("csrf", hidden(&page, "csrf").as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::SEE_OTHER);
    let record = server.get(&format!("/api/v1/records/{id}")).await.unwrap();
    assert_eq!(record.body["state"], "closed", "{}", record.body);
    assert_eq!(record.body["fields"]["customer_confirmed"], true);

    let queue = server
        .act(
            &agent,
            Method::POST,
            "/api/v1/queues",
            Some(json!({"name": "Closed incidents", "domain": "it",
                        "filter": {"kind": "incident", "state": "closed"}})),
        )
        .await;
    assert_eq!(queue.status, StatusCode::CREATED, "{}", queue.body);
    server.settle().await.unwrap();
    let agent_client = cookie_client();
    signed_in(&server, &agent_client, &agent).await;
    let queues = page_text(&agent_client, &format!("{}/ui/records", server.base)).await;
    let saved = queues
        .split("class=\"saved\"")
        .nth(1)
        .expect("the saved queue is listed");
    assert!(saved.contains("Closed incidents"), "{saved}");
    assert!(saved.contains("<span class=\"count\">1</span>"), "{saved}");
    let listing = page_text(
        &agent_client,
        &format!(
            "{}/ui/records?kind=incident&state=closed&count=true",
            server.base
        ),
    )
    .await;
    assert!(
        listing.contains(&format!("/ui/records/{id}")),
        "the queue lists it"
    );
}

#[actix_web::test]
async fn admins_keep_tokens_and_read_people_webhook_deliveries_audit_and_kpi_charts() {
    let server = TestServer::start_with(|config| {
        config.webhook_allowed_networks = vec!["127.0.0.0/8".to_owned()];
        config.webhook_retry_base_ms = 50;
    })
    .unwrap();
    person(&server, "ann", "agent").await;
    let hook = server
        .post(
            "/api/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/usm", "events": ["record.created"],
                    "max_attempts": 1}),
        )
        .await
        .unwrap();
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.body);
    server
        .create(json!({"kind": "incident", "title": "Disk full"}))
        .await
        .unwrap();
    server.settle().await.unwrap();

    let client = cookie_client();
    signed_in(&server, &client, usm_tests::ADMIN_TOKEN).await;
    let get = |path: &'static str| {
        let client = client.clone();
        let base = server.base.clone();
        async move {
            let answer = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{path}");
            answer.text().await.unwrap()
        }
    };

    // A token made in the console works on the API; revoked there, it stops.
    let tokens = get("/ui/admin/tokens").await;
    let made = client
        .post(format!("{}/ui/admin/tokens", server.base))
        .form(&[
            ("name", "monitoring"),
            ("role", "agent"),
            ("domain", "it"),
            ("csrf", hidden(&tokens, "csrf").as_str()),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let secret = made
        .split("<code id=\"secret\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("the secret is shown once")
        .to_owned();
    let works = server
        .call_as(Some(&secret), Method::GET, "/api/v1/kinds", None)
        .await
        .unwrap();
    assert_eq!(works.status, StatusCode::OK);
    let listed = server.get("/api/v1/tokens").await.unwrap();
    let token_id = listed.body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "monitoring")
        .expect("listed")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked = client
        .post(format!("{}/ui/admin/tokens/{token_id}/revoke", server.base))
        .form(&[("csrf", hidden(&tokens, "csrf").as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::SEE_OTHER);
    let stopped = server
        .call_as(Some(&secret), Method::GET, "/api/v1/kinds", None)
        .await
        .unwrap();
    assert_eq!(stopped.status, StatusCode::UNAUTHORIZED);

    let people = get("/ui/admin/people").await;
    assert!(people.contains("ann Lee"), "the directory is listed");

    // The webhook's delivery log.
    let mut webhooks = get("/ui/admin/webhooks").await;
    assert!(webhooks.contains("127.0.0.1:9"), "{webhooks}");
    // The worker's first attempt lands in the log on its own schedule.
    for _ in 0..100 {
        if webhooks.contains("class=\"delivery ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        webhooks = get("/ui/admin/webhooks").await;
    }
    assert!(
        webhooks.contains("class=\"delivery "),
        "a delivery is logged: {webhooks}"
    );

    let audit = get("/ui/admin/audit").await;
    assert!(audit.contains("token.revoke"), "{audit}");
    assert!(audit.contains("webhook"), "{audit}");

    // KPIs drawn as SVG on the server: this week's bar counts the incident.
    let kpis = get("/ui/kpis").await;
    let created = kpis
        .split("id=\"chart_created\"")
        .nth(1)
        .and_then(|rest| rest.split("</figure>").next())
        .expect("the created-per-week chart");
    assert!(created.contains("<svg"), "{created}");
    assert_eq!(created.matches("<rect").count(), 8, "eight weeks");
    let bars: Vec<&str> = created.split("class=\"value\">").skip(1).collect();
    assert!(bars.last().unwrap().starts_with('1'), "{created}");
}

#[actix_web::test]
async fn an_admin_previews_disabling_a_module_against_recent_records_before_doing_it() {
    let server = TestServer::start_with(|config| config.bundled_modules = true).unwrap();
    server
        .create(json!({"kind": "incident", "title": "Mail is down",
                       "fields": {"impact": "high", "urgency": "high"}}))
        .await
        .unwrap();
    let client = cookie_client();
    signed_in(&server, &client, usm_tests::ADMIN_TOKEN).await;
    let modules = page_text(&client, &format!("{}/ui/admin/modules", server.base)).await;
    assert!(
        modules.contains("/ui/admin/modules/itil4/preview?domain=it&amp;change=disable"),
        "a preview link beside the disable button"
    );
    let preview = client
        .get(format!(
            "{}/ui/admin/modules/itil4/preview?domain=it&change=disable",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), StatusCode::OK);
    let preview = preview.text().await.unwrap();
    let figures = preview
        .split("id=\"preview-figures\"")
        .nth(1)
        .and_then(|rest| rest.split("</dl>").next())
        .expect("the preview's figures");
    let numbers: Vec<&str> = figures
        .split("<dd>")
        .skip(1)
        .map(|dd| dd.split('<').next().unwrap())
        .collect();
    assert_eq!(numbers[0], "1", "one record replayed: {figures}");
    assert_eq!(
        numbers[1], "1",
        "without ITIL 4 its priority is not set: {figures}"
    );
    let sample = preview
        .split("class=\"sample\"")
        .nth(1)
        .expect("the record is shown as a sample");
    assert!(
        sample.contains("priority"),
        "the difference is shown: {sample}"
    );
    let module = server.get("/api/v1/modules/itil4").await.unwrap();
    assert!(
        module.body["domains"]
            .as_array()
            .unwrap()
            .contains(&json!("it")),
        "a preview changes nothing"
    );
}

#[actix_web::test]
async fn an_admin_installs_a_bundle_and_an_agent_downloads_an_attachment_through_the_console() {
    let server = TestServer::start().unwrap();
    let manifest = "id = \"stamp\"\nversion = \"1.0.0\"\nframework = \"custom\"\napi = \"^0.1\"\n\
        [[steps]]\nname = \"stamp\"\nhook = \"create\"\nprocess = \"recover\"\nphase = \"before\"\n\
        order = 1\nscript = \"stamp.rhai\"\n";
    let files: usm_engine::ModuleFiles = [
        ("module.toml".to_owned(), manifest.as_bytes().to_vec()),
        (
            "stamp.rhai".to_owned(),
            b"fn run(input) { continue_() }".to_vec(),
        ),
    ]
    .into_iter()
    .collect();
    let bundle = usm_engine::bundle::pack(&files).unwrap();
    let client = cookie_client();
    signed_in(&server, &client, usm_tests::ADMIN_TOKEN).await;
    let page = page_text(&client, &format!("{}/ui/admin/modules", server.base)).await;
    let csrf = hidden(&page, "csrf");
    let upload = |csrf: Option<String>| {
        let mut form = reqwest::multipart::Form::new();
        if let Some(csrf) = csrf {
            form = form.text("csrf", csrf);
        }
        form.part(
            "bundle",
            reqwest::multipart::Part::bytes(bundle.clone()).file_name("stamp.tar.gz"),
        )
    };
    let refused = client
        .post(format!("{}/ui/admin/modules", server.base))
        .multipart(upload(None))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        server.get("/api/v1/modules/stamp").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    let installed = client
        .post(format!("{}/ui/admin/modules", server.base))
        .multipart(upload(Some(csrf)))
        .send()
        .await
        .unwrap();
    let status = installed.status();
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "{}",
        installed.text().await.unwrap()
    );
    let module = server.get("/api/v1/modules/stamp").await.unwrap();
    assert_eq!(module.status, StatusCode::OK, "{}", module.body);
    assert_eq!(module.body["version"], "1.0.0");

    // An attachment uploaded through the API downloads through the console, as it was.
    let made = server
        .create(json!({"kind": "incident", "title": "Scanner"}))
        .await
        .unwrap();
    let id = made["id"].as_str().unwrap();
    let attached = server
        .client()
        .post(format!("{}/api/v1/records/{id}/attachments", server.base))
        .header(header::CONTENT_TYPE, "text/plain")
        .header(
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"scan.txt\"",
        )
        .body("scanned page")
        .send()
        .await
        .unwrap();
    assert_eq!(attached.status(), StatusCode::CREATED);
    let attachment: Value = attached.json().await.unwrap();
    let record_page = page_text(&client, &format!("{}/ui/records/{id}", server.base)).await;
    let link = format!(
        "/ui/records/{id}/attachments/{}",
        attachment["id"].as_str().unwrap()
    );
    assert!(record_page.contains(&link), "the page links the file");
    let download = client
        .get(format!("{}{link}", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    assert_eq!(download.headers()["x-content-type-options"], "nosniff");
    assert!(
        download.headers()[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(download.text().await.unwrap(), "scanned page");
}
