import Foundation
import SluiceTesting
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A real browser for page tests: Debian's `chromium`, headless, driven over the Chrome DevTools Protocol
/// (a WebSocket to one page). Tests navigate, fill and submit forms with JavaScript as a person's clicks
/// would, and read what the page shows (`innerText`). Cookies, CSP, `Sec-Fetch-Site` and same-origin rules
/// are the browser's own.
final class HeadlessChromium: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The browser executable, or nil when it is not installed (the test setup installs it: `.ci/run`).
    static var executable: String? {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
    }

    /// posix_spawn, not Foundation's Process (see ChildProcess).
    private let process: ChildProcess
    private let profile: URL
    private var socket: Int32 = -1
    private var nextID = 0
    private var events: [[String: Any]] = []
    private let lock = NSLock()

    /// Starts the browser off Swift's concurrency threads (its start blocks on its output, seconds on a fresh
    /// machine, and must not hold one of the few threads every other test shares).
    static func start() async throws -> HeadlessChromium {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try HeadlessChromium() }) }
        }
    }

    /// Starts the browser with a fresh profile (no cookies) and connects to its first page. Blocks: see ``start()``.
    init() throws {
        guard let executable = Self.executable else {
            throw Failure(description: "chromium is not installed (apt-get install chromium)")
        }
        profile = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-chromium-\(UUID().uuidString)")
        let pipe = try ChildProcess.pipe()
        process = try ChildProcess(
            executable: executable,
            arguments: [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions", "--remote-debugging-port=0", "--user-data-dir=\(profile.path)",
                "--window-size=1500,1000", "about:blank",
            ],
            standardError: pipe.write.fileDescriptor)
        try pipe.write.close()
        let errors = pipe.read
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while !text.contains("DevTools listening on ws://"), Date() < deadline {
            let chunk = errors.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let range = text.range(of: "ws://127.0.0.1:"),
            let port = Int(text[range.upperBound...].prefix { $0.isNumber })
        else {
            process.terminate()
            throw Failure(description: "chromium did not start its DevTools endpoint: \(text.suffix(500))")
        }
        // Keep draining its standard error so it never blocks on a full pipe.
        Thread.detachNewThread { while !errors.availableData.isEmpty {} }
        let pagePath = try Self.firstPagePath(port: port)
        try connect(port: port, path: pagePath)
        _ = try call("Page.enable")
        _ = try call("Runtime.enable")
    }

    deinit { close() }

    func close() {
        if socket >= 0 { Glibc.close(socket) }
        socket = -1
        if process.isRunning {
            process.terminate()
            while process.isRunning { usleep(10_000) }
        }
        try? FileManager.default.removeItem(at: profile)
    }

    // MARK: What a test does

    /// Runs `body` on a thread of its own: the browser calls block while a page loads, and must not hold
    /// one of the few threads Swift's concurrency shares with the other tests.
    func perform<T: Sendable>(_ body: @escaping @Sendable (HeadlessChromium) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body(self) }) }
        }
    }

    /// Opens `url` and waits until it has loaded.
    func open(_ url: String) throws {
        clearEvents()
        _ = try call("Page.navigate", ["url": url])
        try waitForLoad()
    }

    /// Runs `script` in the page and returns its value (a promise is awaited).
    @discardableResult
    func evaluate(_ script: String) throws -> Any? {
        let result = try call("Runtime.evaluate", ["expression": script, "returnByValue": true, "awaitPromise": true])
        if let exception = result["exceptionDetails"] as? [String: Any] {
            throw Failure(
                description:
                    "script failed: \(exception["text"] ?? "") \((exception["exception"] as? [String: Any])?["description"] ?? "")"
            )
        }
        return (result["result"] as? [String: Any])?["value"]
    }

    /// Runs `script`, which submits a form or follows a link, and waits for the next page to load.
    func submit(_ script: String) throws {
        clearEvents()
        try evaluate(script)
        try waitForLoad()
    }

    /// Turns the page's own JavaScript off or on (the test's scripts still run), for the next page loaded.
    func setScriptsEnabled(_ enabled: Bool) throws {
        _ = try call("Emulation.setScriptExecutionDisabled", ["value": !enabled])
    }

    /// The visible text of the page.
    func text() throws -> String { try evaluate("document.body.innerText") as? String ?? "" }

    /// The page's address now.
    func location() throws -> String { try evaluate("location.href") as? String ?? "" }

    /// A PNG of the page as the browser draws it.
    func screenshot(to path: String) throws {
        let result = try call("Page.captureScreenshot", ["format": "png", "captureBeyondViewport": true])
        guard let base64 = result["data"] as? String, let data = Data(base64Encoded: base64) else {
            throw Failure(description: "no screenshot data")
        }
        try data.write(to: URL(fileURLWithPath: path))
    }

    // MARK: DevTools protocol

    private func clearEvents() { lock.withLock { events.removeAll() } }

    private func waitForLoad(timeout: TimeInterval = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if lock.withLock({ events.contains { $0["method"] as? String == "Page.loadEventFired" } }) { return }
            try readMessage(until: deadline)
        }
        throw Failure(description: "the page did not load within \(Int(timeout)) s")
    }

    /// Sends a command and returns its result; events that arrive meanwhile are kept.
    private func call(_ method: String, _ parameters: [String: Any] = [:]) throws -> [String: Any] {
        nextID += 1
        let id = nextID
        let message = try JSONSerialization.data(withJSONObject: ["id": id, "method": method, "params": parameters])
        try sendFrame(Array(message))
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let reply = try readMessage(until: deadline), reply["id"] as? Int == id {
                if let error = reply["error"] as? [String: Any] {
                    throw Failure(description: "\(method): \(error["message"] ?? error)")
                }
                return reply["result"] as? [String: Any] ?? [:]
            }
        }
        throw Failure(description: "\(method): no answer within 60 s")
    }

    /// Reads one message; events are kept, replies returned.
    @discardableResult
    private func readMessage(until deadline: Date) throws -> [String: Any]? {
        guard let payload = try readFrame() else { return nil }
        guard let object = try JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else { return nil }
        if object["id"] == nil { lock.withLock { events.append(object) } }
        return object
    }

    private static func firstPagePath(port: Int) throws -> String {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let data = try? httpGet(port: port, path: "/json/list"),
                let targets = try? JSONSerialization.jsonObject(with: data) as? [[String: Any]],
                let page = targets.first(where: { $0["type"] as? String == "page" }),
                let url = page["webSocketDebuggerUrl"] as? String, let range = url.range(of: "/devtools/")
            {
                return String(url[range.lowerBound...])
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw Failure(description: "chromium has no page target")
    }

    /// The body of `GET path` from chromium's DevTools HTTP endpoint (HTTP/1.0: read to the close).
    private static func httpGet(port: Int, path: String) throws -> Data {
        let socket = try openSocket(port: port)
        defer { Glibc.close(socket) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { Glibc.send(socket, $0.baseAddress!, request.count, Int32(MSG_NOSIGNAL)) }
        // Read the headers, then exactly Content-Length bytes (the server may keep the connection open).
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        func receive() -> Bool {
            let got = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress!, $0.count, 0) }
            if got > 0 { response += buffer[..<got] }
            return got > 0
        }
        while response.firstRange(of: [13, 10, 13, 10]) == nil { guard receive() else { break } }
        guard let end = response.firstRange(of: [13, 10, 13, 10]) else {
            throw Failure(description: "no HTTP answer from chromium")
        }
        let headers = String(decoding: response[..<end.lowerBound], as: UTF8.self).lowercased()
        let length = headers.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) }
        while response.count - end.upperBound < (length ?? Int.max) { guard receive() else { break } }
        return Data(response[end.upperBound...])
    }

    private static func openSocket(port: Int) throws -> Int32 {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socket >= 0 else { throw Failure(description: "socket() failed") }
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            Glibc.close(socket)
            throw Failure(description: "cannot connect to chromium's DevTools port \(port)")
        }
        return socket
    }

    // MARK: WebSocket (RFC 6455), client side, blocking

    private func connect(port: Int, path: String) throws {
        socket = try Self.openSocket(port: port)
        let handshake =
            "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: c2x1aWNlLXRlc3RzLWtleQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        try writeAll(Array(handshake.utf8))
        var response: [UInt8] = []
        while !response.suffix(4).elementsEqual([13, 10, 13, 10]) { response += try read(1) }
        guard String(decoding: response, as: UTF8.self).hasPrefix("HTTP/1.1 101") else {
            throw Failure(description: "WebSocket upgrade refused: \(String(decoding: response, as: UTF8.self))")
        }
    }

    private func sendFrame(_ payload: [UInt8], opcode: UInt8 = 0x1) throws {
        var frame: [UInt8] = [0x80 | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            frame.append(0x80 | 126)
            frame += [UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(0x80 | 127)
            frame += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> (UInt64($0) * 8)) & 0xFF) }
        }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        try writeAll(frame)
    }

    /// The next complete text message (fragments joined; pings answered), or nil for other frames.
    private func readFrame() throws -> [UInt8]? {
        var message: [UInt8] = []
        while true {
            let header = try read(2)
            let final = header[0] & 0x80 != 0
            let opcode = header[0] & 0x0F
            var length = Int(header[1] & 0x7F)
            if length == 126 {
                let bytes = try read(2)
                length = Int(bytes[0]) << 8 | Int(bytes[1])
            } else if length == 127 {
                length = try read(8).reduce(0) { $0 << 8 | Int($1) }
            }
            let masked = header[1] & 0x80 != 0
            let mask = masked ? try read(4) : []
            var payload = try read(length)
            if masked { payload = payload.enumerated().map { $0.element ^ mask[$0.offset % 4] } }
            switch opcode {
            case 0x9:
                try sendFrame(payload, opcode: 0xA)
                continue
            case 0x8:
                throw Failure(description: "chromium closed the DevTools connection")
            case 0x0, 0x1, 0x2:
                message += payload
                if final { return message }
            default:
                if final { return nil }
            }
        }
    }

    private func read(_ count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let got = buffer.withUnsafeMutableBytes { Glibc.recv(socket, $0.baseAddress! + done, count - done, 0) }
            guard got > 0 else { throw Failure(description: "reading from chromium failed (timeout or closed)") }
            done += got
        }
        return buffer
    }

    private func writeAll(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let wrote = bytes.withUnsafeBytes {
                Glibc.send(socket, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            }
            guard wrote > 0 else { throw Failure(description: "writing to chromium failed") }
            done += wrote
        }
    }
}
