//! The dashboard in a real browser: Debian's chromium driven through
//! chromedriver (WebDriver, fantoccini) against a real server on loopback
//! with a group mid-rollout. Logs in, reads the group's counts, pauses it,
//! sees it paused, finds an instance by alias, checks a viewer has no write
//! controls, and saves screenshots under docs/screenshots/.
//!
//! Needs `chromium` and `chromium-driver` (scripts/install-deps); without
//! them this test fails and says so.

use crate::dashboard_support;
use crate::support;

use std::time::{Duration, Instant};

use dashboard_support::{seed_rollout, APP, EXPECTED, GROUP, TOTAL};
use fantoccini::{Client, Locator};
use fastpatch_testsupport::browser::{browser, login, screenshot_dir, shot, start_driver};
use futures_util::FutureExt;
use support::{server, Backend};

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css}: {e}"))
        .text()
        .await
        .expect("text")
}

/// Waits (up to 20 s) until the browser is on a URL containing `part`: a
/// click returns before the navigation it starts has finished.
async fn wait_url(c: &Client, part: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = c.current_url().await.expect("url");
        if url.as_str().contains(part) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {part}, still at {url}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_rollout_pause_and_search() {
    let driver = start_driver();
    let s = server(Backend::Sqlite).await;
    seed_rollout(&s).await;
    let base = s.handle.base_url().to_owned();
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path()).await;

    let result = std::panic::AssertUnwindSafe(async {
        login(&c, &base, "admin-token").await;
        // Overview: the group card with its numbers.
        let card = format!(r#"article[data-group="{GROUP}"]"#);
        assert_eq!(text(&c, &format!("{card} .total")).await, TOTAL.to_string());
        assert_eq!(text(&c, &format!("{card} .on-target")).await, "5");
        let legend = text(&c, &format!("{card} ul.legend:last-of-type")).await;
        assert!(
            legend.contains("complete: 5") && legend.contains("failed: 1"),
            "{legend}"
        );
        shot(&c, "overview").await;

        // Group page: the right counts per status.
        c.find(Locator::Css(&format!("{card} h4 a")))
            .await
            .expect("group link")
            .click()
            .await
            .expect("click");
        wait_url(&c, &format!("/groups/{GROUP}")).await;
        c.wait()
            .for_element(Locator::Css("#group-name"))
            .await
            .expect("the group page");
        assert_eq!(text(&c, "#group-name").await, GROUP);
        assert_eq!(text(&c, "#total").await, TOTAL.to_string());
        for (status, n) in EXPECTED {
            assert_eq!(
                text(&c, &format!("#count-{status} td.num")).await,
                n.to_string(),
                "{status}"
            );
        }
        assert!(text(&c, "#running").await.contains("Rollout running"));
        c.goto(&format!("{base}/ui/apps/{APP}/groups/{GROUP}?range=1h"))
            .await
            .expect("goto");
        let legend = text(&c, "#statuses ul.legend").await;
        assert!(
            legend.contains("complete: 5") && legend.contains("downloading: 3"),
            "{legend}"
        );
        shot(&c, "group").await;
        let charts = c
            .find(Locator::Css("section.history"))
            .await
            .expect("charts");
        let png = charts.screenshot().await.expect("chart screenshot");
        std::fs::write(screenshot_dir().join("group-charts.png"), png).expect("writing screenshot");

        // Pause it (the page asks for confirmation first), then see it paused.
        c.find(Locator::Css("input[name=reason]"))
            .await
            .expect("reason")
            .send_keys("paused by the browser test")
            .await
            .expect("type");
        c.find(Locator::Css("#pause"))
            .await
            .expect("pause button")
            .click()
            .await
            .expect("click");
        c.accept_alert().await.expect("the confirmation dialog");
        c.wait()
            .for_element(Locator::Css("#halted"))
            .await
            .expect("the halted banner");
        assert!(text(&c, "#halted").await.contains("HALTED"));
        assert_eq!(text(&c, "#halt-reason").await, "paused by the browser test");
        assert!(text(&c, "p.notice").await.contains("Rollout paused."));
        assert!(
            c.find(Locator::Css("#resume")).await.is_ok(),
            "a resume button"
        );
        let g = s
            .handle
            .store()
            .group(APP, GROUP)
            .await
            .expect("db")
            .expect("group");
        assert!(g.halted, "paused in the database too");
        c.goto(&format!("{base}/ui/")).await.expect("goto");
        let banner = text(&c, &format!("{card} .halt-banner")).await;
        assert!(
            banner.contains("HALTED") && banner.contains("paused by the browser test"),
            "{banner}"
        );

        // Find an instance by its alias.
        c.goto(&format!("{base}/ui/instances")).await.expect("goto");
        c.find(Locator::Css("#search"))
            .await
            .expect("search")
            .send_keys("node-08")
            .await
            .expect("type");
        c.find(Locator::Css("form.filters button[type=submit]"))
            .await
            .expect("filter")
            .click()
            .await
            .expect("click");
        // The list page had a table before the search: wait for the new page.
        wait_url(&c, "q=node-08").await;
        c.wait()
            .for_element(Locator::Css("#instances"))
            .await
            .expect("results");
        let rows = c
            .find_all(Locator::Css("#instances tbody tr"))
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1, "exactly the one machine");
        let row = rows[0].text().await.expect("row text");
        assert!(
            row.contains("m08") && row.contains("node-08") && row.contains("downloading"),
            "{row}"
        );
        c.goto(&format!("{base}/ui/instances?app={APP}&group={GROUP}"))
            .await
            .expect("goto");
        shot(&c, "instances").await;
        c.goto(&format!("{base}/ui/apps/{APP}/instances/m10"))
            .await
            .expect("goto");
        let events = text(&c, "#events").await;
        assert!(events.contains("hash does not match"), "{events}");
        shot(&c, "instance").await;
        c.goto(&format!("{base}/ui/apps/{APP}/packages"))
            .await
            .expect("goto");
        shot(&c, "packages").await;

        // A viewer: same pages, no write controls.
        c.find(Locator::Css("header button.link"))
            .await
            .expect("log out")
            .click()
            .await
            .expect("click");
        wait_url(&c, "/ui/login").await;
        login(&c, &base, "viewer-token").await;
        c.goto(&format!("{base}/ui/apps/{APP}/groups/{GROUP}"))
            .await
            .expect("goto");
        assert!(text(&c, "#halted").await.contains("HALTED"));
        for css in ["#resume", "#pause", "form.policy"] {
            assert!(
                c.find(Locator::Css(css)).await.is_err(),
                "viewer sees {css}"
            );
        }
        assert!(text(&c, "header .who").await.contains("viewer (read-only)"));
    })
    .catch_unwind()
    .await;
    // Close the browser session even after a failed assertion (no stray chromium).
    let _ = c.close().await;
    s.handle.shutdown().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
