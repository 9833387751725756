"""A small local web page: the daemon's health and a preview of its input and output.

``http://HOST:PORT/`` shows the source state, output and processed fps, latency, drops, sinks and
the current preset, next to the latest input and output frames (JPEG, at most 384 px wide), and
refreshes itself twice a second. Other paths: ``/status.json`` (the same figures), ``/input.jpg``,
``/output.jpg`` (503 until a frame exists). Only GET and HEAD are served.

The page reads what the other threads already publish (metrics, the latest frames by reference);
it never touches the model, the pipeline or a sink, and an error in a request is logged and
answered with 500 without affecting anything else. Each preview is encoded once per frame: the
JPEG is kept with the frame it came from (by identity) and every client asking before the next
frame gets the same bytes, so the encoding cost does not grow with the number of viewers. It
listens on 127.0.0.1 unless told otherwise: there is no authentication, so only open it to a
network you trust (the server's connection cap, timeouts, Host check and allow-list are in
:mod:`bridge.httpserver`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import numpy as np

from bridge.httpserver import LocalHttpServer, Response

log = logging.getLogger(__name__)

PREVIEW_MAX_WIDTH = 384
JPEG_QUALITY = 80

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>StreamBridge</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;background:#111;color:#ddd;margin:16px}
 h1{font-size:18px;margin:0 0 12px} .row{display:flex;gap:16px;flex-wrap:wrap}
 figure{margin:0} figcaption{color:#888;margin-top:4px}
 img{width:384px;max-width:100%;background:#000;border:1px solid #333;image-rendering:auto}
 table{border-collapse:collapse;margin-top:12px} td{padding:2px 12px 2px 0;vertical-align:top}
 td:last-child{max-width:640px;overflow-wrap:anywhere}
 td:first-child{color:#888} .live{color:#6c6} .bad{color:#e66}
</style></head><body>
<h1>StreamBridge <span id="state"></span></h1>
<div class="row">
 <figure><img id="input" alt="input"><figcaption>input (what the pipeline receives)</figcaption></figure>
 <figure><img id="output" alt="output"><figcaption>output (what the sinks are sent)</figcaption></figure>
</div>
<table id="figures"></table>
<script>
function refreshImage(id){
  const img=document.getElementById(id);
  const next=()=>setTimeout(()=>refreshImage(id),250);
  const probe=new Image();
  probe.onload=()=>{img.src=probe.src;next();};
  probe.onerror=next;
  probe.src='/'+id+'.jpg?t='+Date.now();
}
async function refreshFigures(){
  try{
    const r=await fetch('/status.json',{cache:'no-store'});
    const s=await r.json();
    const st=document.getElementById('state');
    st.textContent=s.source+(s.source_error?': '+s.source_error:''); st.className=s.source==='live'?'live':'bad';
    const esc=t=>String(t).replace(/[&<>"]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
    const rows=[];
    for(const [k,v] of Object.entries(s)){
      if(v!==null&&typeof v==='object'){  // one level down: params.prompt, sinks.0 ...
        for(const [k2,v2] of Object.entries(v))
          rows.push([k+'.'+k2,typeof v2==='object'?JSON.stringify(v2):v2]);
      }else rows.push([k,v]);
    }
    document.getElementById('figures').innerHTML=
      rows.map(([k,v])=>'<tr><td>'+esc(k)+'</td><td>'+esc(v)+'</td></tr>').join('');
  }catch(e){document.getElementById('state').textContent='(daemon not answering)';}
  setTimeout(refreshFigures,500);
}
refreshImage('input'); refreshImage('output'); refreshFigures();
</script></body></html>
"""


def encode_preview(rgb: np.ndarray, max_width: int = PREVIEW_MAX_WIDTH, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an H x W x 3 uint8 RGB frame, scaled down to at most ``max_width`` wide."""
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 uint8, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    if w > max_width:
        rgb = cv2.resize(rgb, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class _Preview:
    """The JPEG of one preview stream, kept with the frame object it was encoded from."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frame: np.ndarray | None = None  # held, so its identity cannot be reused meanwhile
        self.jpeg = b""
        self.encodes = 0


class StatusPage(LocalHttpServer):
    """The page's server. ``status()`` returns a JSON-able dict; ``frame(which)`` the latest
    ``"input"`` or ``"output"`` RGB frame or None; a new frame is a new array object (a frame is
    never written to after it is published). Both are called on the server's threads.
    ``allow`` and ``**server`` go to :class:`bridge.httpserver.LocalHttpServer`."""

    def __init__(self, host: str, port: int, status: Callable[[], dict[str, Any]],
                 frame: Callable[[str], np.ndarray | None], *, allow: Sequence[str] | None = None,
                 **server: Any) -> None:
        self.status = status
        self.frame = frame
        self._previews = {"input": _Preview(), "output": _Preview()}
        super().__init__(host, port, "status-page", allow=allow, **server)  # binds now

    @property
    def encodes(self) -> int:
        """JPEGs encoded so far (each preview frame once)."""
        return sum(p.encodes for p in self._previews.values())

    def preview_jpeg(self, which: str) -> bytes | None:
        """The JPEG of the current ``which`` frame, encoded at most once per frame however many
        clients ask (concurrent requests for a new frame wait for the one encoding)."""
        frame = self.frame(which)
        if frame is None:
            return None
        cache = self._previews[which]
        with cache.lock:
            if cache.frame is not frame:
                cache.jpeg = encode_preview(frame)
                cache.frame = frame
                cache.encodes += 1
            return cache.jpeg

    def route(self, path: str, query: str) -> Response:
        if path == "/":
            return Response(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/status.json":
            return Response(HTTPStatus.OK, json.dumps(self.status(), default=str).encode(), "application/json")
        if path in ("/input.jpg", "/output.jpg"):
            jpeg = self.preview_jpeg(path[1:-4])
            if jpeg is None:
                return Response(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n")
            return Response(HTTPStatus.OK, jpeg, "image/jpeg")
        return Response(HTTPStatus.NOT_FOUND, b"not found\n")

    def start(self) -> None:
        super().start()
        log.info("status page on %s", self.url)
