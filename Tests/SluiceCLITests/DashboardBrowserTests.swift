import Foundation
import Logging
import Sluice
import SluiceKafka
import SluiceTesting
import Testing

/// The operator dashboard as a person uses it: two OrderService processes in one group with the control
/// plane, the dashboard of one of them opened in headless Chromium.
@Suite("The operator dashboard in a real browser", .timeLimit(.minutes(5)))
struct DashboardBrowserTests {
    let logger = Logger(label: "sluice.dashboard-test")

    /// How many hosts own a shard in the page's shard table.
    static let distinctOwners =
        "new Set([...document.querySelectorAll('#shards tbody tr td:nth-child(2)')].map(c => c.innerText)).size"

    /// The script a person's typing and clicking amounts to: the flag form filled in, then Preview.
    static func flagForm(target: String, value: String, reason: String) -> String {
        """
        document.getElementById('flag-target').value = '\(target)';
        document.getElementById('flag-value').value = '\(value)';
        document.getElementById('flag-reason').value = '\(reason)';
        document.getElementById('flag-preview').click();
        """
    }

    @Test(
        "shards of every host, why each is paused; actions refused without the token, the CSRF token or from another origin; a flag flipped from the page stops the topic on both hosts; the audit; a quarantine released from the page; hostile text escaped"
    )
    func operatorConsole() async throws {
        let cluster = try EmbeddedKafkaCluster(topics: ["orders": 8, "payments": 4, "orders.dlq": 1])
        let group = "dashboard-\(UInt32.random(in: 0...UInt32.max))"
        let controlTopic = "__sluice-control-\(group)"
        try cluster.createTopic(controlTopic, partitions: 1)
        try cluster.createTopic("__sluice-audit-\(group)", partitions: 1)
        // Reads open (admin.publicReads): this test looks at pages before it logs in; DashboardSessionTests has
        // the login-first pages.
        let open = ["SLUICE_CONTROL_ENABLED": "true", "SLUICE_ADMIN_PUBLIC_READS": "true"]
        let (a, _) = try OrderServiceTests.startService(cluster, group: group, environment: open)
        let (b, _) = try OrderServiceTests.startService(cluster, group: group, environment: open)
        defer {
            a.process.terminate()
            b.process.terminate()
        }
        #expect(await a.errors.waitFor("control plane loaded"))
        #expect(await b.errors.waitFor("control plane loaded"))
        let urlA = try #require(
            await eventually(poll: .milliseconds(250)) { CrashContainmentTests.adminURL(in: a.errors.text) != nil }
                ? CrashContainmentTests.adminURL(in: a.errors.text) : nil)
        let pidA = a.process.processIdentifier
        let pidB = b.process.processIdentifier
        let produce = try SluiceProcess([
            "produce", "--bootstrap", cluster.bootstrapServers, "--topic", "orders", "--count", "400", "--keys", "20",
        ])
        await produce.expectCleanExit()

        // A quarantined message (as a host that died on it would publish it), and hostile text in the control
        // topic: a host record whose name is markup.
        let writer = try ControlPlaneWriter(
            bootstrapServers: cluster.bootstrapServers, topic: controlTopic, logger: logger)
        var quarantine = Quarantine(
            offset: 1_000_000, crashes: 2, state: .quarantined, signal: "SIGILL", host: "pod-x",
            atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
        quarantine.report =
            "Fatal error: the order's total is negative\nThread 3 crashed:\n0 OrderService OrderHandler.handle(_:context:)"
        try await writer.setQuarantine(TopicPartition("orders", 5), quarantine)
        await writer.close()
        let hostile = "<img src=x onerror=\"document.title='pwned'\">"
        func publishHostileHost() async throws {
            let producer = try KafkaProducer(
                configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers), logger: logger)
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let value = #"{"v":1,"applied":0,"atMillis":\#(now),"shards":{}}"#
            _ = try await producer.send(
                ProducerRecord(
                    topic: controlTopic, partition: 0, key: Array("host/\(hostile)".utf8), value: Array(value.utf8)))
            await producer.close()
        }
        try await publishHostileHost()
        /// The hostile host says it left (it would count as a live host that never applies anything).
        func goneHostile() async throws {
            let producer = try KafkaProducer(
                configuration: KafkaProducerConfiguration(bootstrapServers: cluster.bootstrapServers), logger: logger)
            _ = try await producer.send(
                ProducerRecord(
                    topic: controlTopic, partition: 0, key: Array("host/\(hostile)".utf8),
                    value: Array(#"{"v":1,"state":"gone"}"#.utf8)))
            await producer.close()
        }

        let browser = try await HeadlessChromium.start()
        defer { browser.close() }

        // What a person sees: every partition of the group with its owner, both hosts, the quarantine. The page
        // says what the hosts last said: while the group rebalances (a host that starts later on a loaded machine
        // joins a group the other already consumes alone) it lists fewer shards, or one owner; the test reads on
        // once the group has settled, every one of the 12 partitions listed once and both hosts owning some.
        var settled = ""
        #expect(
            await eventually(poll: .milliseconds(250)) {
                let (text, rows, owners) = try await browser.perform { browser -> (String, Int, Int) in
                    try browser.open(urlA + "/")
                    let rows = try browser.evaluate("document.querySelectorAll('#shards tbody tr').length") as? Int ?? 0
                    let owners = try browser.evaluate(Self.distinctOwners) as? Int ?? 0
                    return (try browser.text(), rows, owners)
                }
                settled = text
                return rows == 12 && owners == 2 && (0..<8).allSatisfy { text.contains("orders/\($0)") }
                    && text.contains("-\(pidA)-") && text.contains("-\(pidB)-")
            }, "the shard table shows the group's 12 partitions, owned by both hosts: \(settled)")
        // A host record is live for 15 s after it was written, and the wait above can take longer on a loaded
        // machine: the hostile host says it is alive again, and the page is read once it shows.
        try await publishHostileHost()
        #expect(
            await eventually(poll: .milliseconds(250)) {
                try await browser.perform {
                    try $0.open(urlA + "/")
                    return try $0.text()
                }.contains(hostile)
            }, "the hostile host is listed")
        let home = try await browser.perform { browser -> (String, Int, String) in
            try browser.open(urlA + "/")
            let owners = try browser.evaluate(Self.distinctOwners) as? Int ?? 0
            return (try browser.text(), owners, try browser.evaluate("document.title") as? String ?? "")
        }
        #expect(home.1 == 2, "shards owned by both hosts are listed: \(home.0)")
        #expect(home.0.contains(hostile), "the hostile host name is shown as text")
        #expect(home.2 != "pwned", "and never run")
        #expect(
            try await browser.perform { try $0.evaluate("document.querySelectorAll('#hosts img').length") as? Int } == 0
        )
        try await goneHostile()
        #expect(home.0.contains("quarantined at 1000000"))
        // Live with JavaScript on: the page fetches itself again every few seconds and swaps its content in.
        #expect(
            await eventually(poll: .milliseconds(250)) {
                try await browser.perform { try $0.evaluate("document.body.getAttribute('data-refreshed')") as? String }
                    != nil
            }, "the shard table refreshes itself")
        // Readable with JavaScript off: the same table, served complete.
        let withoutScripts = try await browser.perform { browser -> String in
            try browser.setScriptsEnabled(false)
            defer { try? browser.setScriptsEnabled(true) }
            try browser.open(urlA + "/")
            return try browser.text()
        }
        #expect((0..<8).allSatisfy { withoutScripts.contains("orders/\($0)") }, "\(withoutScripts)")

        // Without the token: refused, nothing written.
        let refused = try await browser.perform { browser -> String in
            try browser.submit(Self.flagForm(target: "orders", value: "off", reason: "not allowed"))
            return try browser.text()
        }
        #expect(refused.contains("log in with the admin token to make changes"), "\(refused)")
        // A forged form post without the page's CSRF token.
        let forged = try await browser.perform { browser -> String in
            try browser.open(urlA + "/")
            return try browser.evaluate(
                """
                fetch('/actions/preview', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                  body: 'action=flag&target=orders&value=off&reason=forged&csrf=wrong'}).then(r => r.status + ' ' + r.statusText).then(s => s)
                """) as? String ?? ""
        }
        #expect(forged.hasPrefix("403"), "\(forged)")
        // From another site (a page of another origin; the dashboard's own CSP keeps its forms from posting
        // elsewhere): the browser says so in Sec-Fetch-Site, and the dashboard refuses.
        let crossSite = try await browser.perform { browser -> String in
            let page = """
                <form method="post" action="\(urlA)/actions/apply"><input name="action" value="flag"><input name="target" value="orders">\
                <input name="value" value="off"><input name="reason" value="cross"><input name="csrf" value="x"><button id="go">go</button></form>
                """
            try browser.open(
                "data:text/html," + (page.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
            try browser.submit("document.getElementById('go').click()")
            return try browser.text()
        }
        #expect(crossSite.contains("refused: a cross-site request"), "\(crossSite)")
        #expect(
            (try await browser.perform {
                try $0.open(urlA + "/")
                return try $0.text()
            }).contains("No flags set"), "nothing was written")

        // Log in, flip `orders` off with a preview first: every orders shard of both hosts will drain and stop.
        let loggedIn = try await browser.perform { browser -> String in
            try browser.open(urlA + "/login")
            try browser.submit(
                """
                document.getElementById('login-name').value = 'ann';
                document.getElementById('login-token').value = 'test-token';
                document.getElementById('login-submit').click();
                """)
            return try browser.text()
        }
        #expect(loggedIn.contains("Log out"), "\(loggedIn)")
        let preview = try await browser.perform { browser -> String in
            try browser.submit(
                Self.flagForm(target: "orders", value: "off", reason: "incident 42 <b>payments down</b>"))
            return try browser.text()
        }
        #expect(
            preview.contains("Confirm: set flag orders to off") && preview.contains("8 shard(s) will change"),
            "\(preview)")
        #expect(preview.components(separatedBy: "drain, commit and stop").count - 1 == 8, "\(preview)")
        let done = try await browser.perform { browser -> String in
            try browser.submit("document.getElementById('confirm').click()")
            return try browser.text()
        }
        #expect(done.contains("2/2 hosts applied it"), "\(done)")
        var offPage = ""
        #expect(
            await eventually(poll: .milliseconds(250)) {
                offPage = try await browser.perform {
                    try $0.open(urlA + "/?topic=orders&state=off")
                    return try $0.text()
                }
                return offPage.contains("Shards 8 of 12")
            }, "every orders shard of both hosts is off: \(offPage)")
        let reasons = try await browser.perform {
            try $0.open(urlA + "/shards/orders/3")
            return try $0.text()
        }
        #expect(
            reasons.contains("flag: flag off (control, by ann via dashboard: incident 42 <b>payments down</b>)"),
            "why it is paused, who, escaped: \(reasons)")

        // The audit timeline: who and why.
        let audit = try await browser.perform {
            try $0.open(urlA + "/audit")
            return try $0.text()
        }
        #expect(
            audit.contains("flag/orders") && audit.contains("ann via dashboard") && audit.contains("incident 42"),
            "\(audit)")

        // The quarantined message, its crash report, released from the page.
        let shard = try await browser.perform {
            try $0.open(urlA + "/shards/orders/5")
            return try $0.text()
        }
        #expect(
            shard.contains("Quarantined message at offset 1000000") && shard.contains("the order's total is negative"),
            "\(shard)")
        if let folder = ProcessInfo.processInfo.environment["SLUICE_DASHBOARD_SCREENSHOTS"] {
            try await browser.perform { browser in
                try browser.screenshot(to: folder + "/dashboard-shard.png")
                try browser.open(urlA + "/")
                try browser.screenshot(to: folder + "/dashboard-shards.png")
                try browser.open(urlA + "/audit")
                try browser.screenshot(to: folder + "/dashboard-audit.png")
                try browser.open(urlA + "/shards/orders/5")
            }
        }
        let released = try await browser.perform { browser -> String in
            try browser.submit(
                """
                document.querySelector('#skip-form input[name=reason]').value = 'refunded by hand';
                document.querySelector('#skip-form button').click();
                """)
            try browser.submit("document.getElementById('confirm').click()")
            return try browser.text()
        }
        #expect(released.contains("Done: skip the quarantined message at offset 1000000 of orders/5"), "\(released)")
        let afterRelease = try await browser.perform {
            try $0.open(urlA + "/audit")
            return try $0.text()
        }
        #expect(
            afterRelease.contains("quarantine/orders/5") && afterRelease.contains("refunded by hand"), "\(afterRelease)"
        )

        // Back on from the page: both hosts resume, nothing lost.
        let resumed = try await browser.perform { browser -> String in
            try browser.open(urlA + "/")
            try browser.submit(Self.flagForm(target: "orders", value: "unset", reason: "incident 42 over"))
            try browser.submit("document.getElementById('confirm').click()")
            return try browser.text()
        }
        #expect(resumed.contains("2/2 hosts applied it"), "\(resumed)")
        var configuration = KafkaConsumerConfiguration(bootstrapServers: cluster.bootstrapServers, groupID: group)
        configuration.sessionTimeout = .seconds(6)
        let checker = try KafkaConsumer(configuration: configuration, logger: logger)
        let partitions = (0..<8).map { TopicPartition("orders", Int32($0)) }
        #expect(
            await eventually(poll: .milliseconds(250)) {
                try await checker.committedOffsets(for: partitions).values.reduce(0, +) == 400
            }, "every order handled")
        await checker.close()
        // The services leave while the cluster is still up (otherwise they wait for a broker that is gone).
        a.process.terminate()
        b.process.terminate()
        #expect(await a.exit() == 0)
        #expect(await b.exit() == 0)
        withExtendedLifetime(cluster) {}
    }
}
