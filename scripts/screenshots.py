#!/usr/bin/env python3
"""Renders dashboard pages in headless Chromium and saves each as a PNG.

Usage: MAI_FLEET_SESSION=<session cookie> screenshots.py --base URL --out DIR PATH...

The session cookie (from a login) comes through the environment, never the command
line. Talks to Chromium over the DevTools protocol (websocket-client from PyPI):
sets the cookie, opens each page, waits for it to load, captures the full page.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket  # websocket-client


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tab:
    def __init__(self, ws_url):
        self.ws = websocket.create_connection(ws_url, timeout=30)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def wait_event(self, name, timeout=20):
        end = time.time() + timeout
        while time.time() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == name:
                return msg
        raise TimeoutError(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("paths", nargs="+")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        sys.exit("screenshots: chromium is not installed (apt-get install chromium)")
    os.makedirs(args.out, exist_ok=True)
    port = free_port()
    profile = tempfile.mkdtemp(prefix="mai-fleet-chromium-")
    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        targets = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not targets:
            sys.exit("screenshots: chromium did not start")
        tab = Tab(targets[0]["webSocketDebuggerUrl"])
        tab.call("Page.enable")
        tab.call("Network.enable")
        session = os.environ.get("MAI_FLEET_SESSION", "")
        for path in args.paths:
            # The login page is shown logged out; every other page with the session.
            tab.call("Network.clearBrowserCookies")
            if session and not path.startswith("/login"):
                tab.call("Network.setCookie", name="mai_session", value=session, url=args.base,
                         httpOnly=True, sameSite="Lax")
            tab.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                     deviceScaleFactor=1, mobile=False)
            tab.call("Page.navigate", url=args.base + path)
            tab.wait_event("Page.loadEventFired")
            metrics = tab.call("Page.getLayoutMetrics")
            height = int(metrics["cssContentSize"]["height"])
            tab.call("Emulation.setDeviceMetricsOverride", width=1400, height=max(height, 600),
                     deviceScaleFactor=1, mobile=False)
            shot = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            name = path.strip("/").split("?")[0].replace("/", "_") or "fleet"
            file = os.path.join(args.out, f"{name}.png")
            with open(file, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print(f"screenshots: {args.base}{path} -> {file}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
