"""The read-only web dashboard: one self-contained page and the JSON it polls.

The page (no external scripts, fonts or styles: it works on an isolated
network) fetches ``/api/stat`` every second and draws the cluster's health,
space, chunk health, servers, clients, the latest events and a graph of the
last two minutes of I/O.  Only the master has the cluster's state; a
follower's ``/api/stat`` answers 503 naming the master.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from chunkfs.common.errors import ChunkFSError

if TYPE_CHECKING:
    from chunkfs.mds.server import MetadataServer

EVENTS_SHOWN = 20


async def api_stat(server: MetadataServer) -> tuple[int, str, bytes]:
    if not server.raft.is_leader():
        body = {"error": f"MDS#{server.node.node_id} is not the master", "master": server.raft.leader_hint() or ""}
        return 503, "application/json", json.dumps(body).encode()
    try:
        await server.log.read_barrier()
        await server.healing.settle()
    except ChunkFSError as exc:
        return 503, "application/json", json.dumps({"error": str(exc)}).encode()
    stat = server.cluster_stat()
    last = stat["events_seq"]
    events = server.store.events(max(0, last - EVENTS_SHOWN), EVENTS_SHOWN)
    return 200, "application/json", json.dumps({"stat": stat, "events": events}).encode()


async def page() -> tuple[int, str, bytes]:
    return 200, "text/html; charset=utf-8", PAGE.encode()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ChunkFS dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:center}
header h1{font-size:18px;margin:0}
.badge{padding:2px 10px;border-radius:10px;font-weight:600;text-transform:uppercase;font-size:12px}
.healthy,.active,.master{color:#0a7a3b}.degraded,.joining,.inactive{color:#a66300}.error,.offline{color:#c0262d}
.badge.healthy{background:#d6f5e3}.badge.degraded{background:#fdebc8}.badge.error{background:#fbd5d7}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(3,1fr);gap:16px}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1}
h2{font-size:13px;text-transform:uppercase;color:#5b6375;margin:0 0 8px}
.big{font-size:22px;font-weight:600}
.bar{height:10px;background:#e3e6ec;border-radius:5px;overflow:hidden;margin:6px 0}
.bar div{height:100%;background:#3b6fd8}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:3px 8px;border-bottom:1px solid #eceef2}
th{color:#5b6375;font-weight:600;font-size:12px}td.num{text-align:right;font-variant-numeric:tabular-nums}
#events td{font-family:ui-monospace,monospace;font-size:12px}
canvas{width:100%;height:160px}
.legend span{margin-right:14px}.r{color:#3b6fd8}.w{color:#d8613b}
</style></head><body>
<header><h1>ChunkFS <span id="cluster">…</span></h1><span id="status" class="badge">loading</span>
<span id="updated"></span></header>
<main>
<section><h2>Space</h2><div class="big" id="space-free">–</div><div class="bar"><div id="space-bar"></div></div>
<div id="space-text"></div></section>
<section><h2>Chunks</h2><table id="chunks"></table></section>
<section><h2>I/O now</h2><div class="big"><span class="r" id="io-read">–</span> / <span class="w" id="io-write">–</span>
</div><div id="io-ops"></div></section>
<section class="wide"><h2>I/O, last two minutes</h2><canvas id="graph" width="1200" height="160"></canvas>
<div class="legend"><span class="r">&#9632; read</span><span class="w">&#9632; write</span>
<span id="graph-max"></span></div>
</section>
<section class="wide"><h2>Metadata servers</h2><table id="mds"></table></section>
<section class="wide"><h2>Chunk servers</h2><table id="cs"></table></section>
<section><h2>Clients</h2><table id="clients"></table></section>
<section class="wide" style="grid-column:2/-1"><h2>Latest events</h2><table id="events"></table></section>
</main>
<script>
"use strict";
const history = [];
function human(n){const u=["B","KiB","MiB","GiB","TiB","PiB"];let i=0;n=Number(n)||0;
  while(n>=1024&&i<u.length-1){n/=1024;i++;}return (i?n.toFixed(1):n)+" "+u[i];}
function dur(s){if(s==null)return "";s=Math.floor(s);const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),
  m=Math.floor(s%3600/60);return d?d+"d "+h+"h":h?h+"h "+m+"m":m+"m "+(s%60)+"s";}
function esc(t){return String(t).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
function table(id, head, rows){document.getElementById(id).innerHTML="<tr>"+head.map(h=>"<th>"+h+"</th>").join("")+
  "</tr>"+rows.map(r=>"<tr"+(r.attrs||"")+">"+r.cells.map(c=>"<td"+(c.cls?' class="'+c.cls+'"':"")+">"+
  c.html+"</td>").join("")+"</tr>").join("");}
function cell(v,cls){return {html:esc(v),cls:cls};}
function draw(){const c=document.getElementById("graph"),g=c.getContext("2d");g.clearRect(0,0,c.width,c.height);
  const max=Math.max(1,...history.map(h=>Math.max(h.r,h.w)));document.getElementById("graph-max").textContent=
  "max "+human(max)+"/s";const step=c.width/119;
  for(const [key,color] of [["r","#3b6fd8"],["w","#d8613b"]]){g.beginPath();g.strokeStyle=color;g.lineWidth=2;
    history.forEach((h,i)=>{const x=c.width-(history.length-1-i)*step,y=c.height-4-(c.height-8)*h[key]/max;
      i?g.lineTo(x,y):g.moveTo(x,y);});g.stroke();}}
function render(d){const s=d.stat;document.getElementById("cluster").textContent=s.cluster.name;
  const st=document.getElementById("status");st.textContent=s.status;st.className="badge "+s.status;
  document.getElementById("updated").textContent="updated "+new Date().toLocaleTimeString();
  const used=s.space.total-s.space.free;document.getElementById("space-free").textContent=human(s.space.free)+" free";
  document.getElementById("space-bar").style.width=(s.space.total?100*used/s.space.total:0)+"%";
  document.getElementById("space-text").textContent=human(used)+" used of "+human(s.space.total);
  table("chunks",["state","chunks"],Object.entries(s.chunks).map(([k,v])=>({cells:[cell(k,k==="healthy"?"healthy":
    v?(k==="degraded"?"degraded":"error"):""),cell(v,"num")]})));
  document.getElementById("io-read").textContent=human(s.io.read_bps)+"/s";
  document.getElementById("io-write").textContent=human(s.io.write_bps)+"/s";
  document.getElementById("io-ops").textContent=s.io.read_iops+" reads/s, "+s.io.write_iops+" writes/s";
  history.push({r:s.io.read_bps,w:s.io.write_bps});while(history.length>120)history.shift();draw();
  table("mds",["id","role","term","commit","CPU","memory","uptime","address"],s.mds.map(m=>({attrs:
    ' data-id="'+m.id+'"',cells:[cell("MDS#"+m.id),cell(m.role,m.role),cell(m.term,"num"),cell(m.commit,"num"),
    cell(m.proc&&m.proc.cpu!=null?m.proc.cpu+"%":"","num"),cell(m.proc&&m.proc.rss?human(m.proc.rss):"","num"),
    cell(dur(m.proc&&m.proc.uptime)),cell(m.addr)]})));
  table("cs",["id","status","space","free","replicas","read/s","write/s","latency","queue","host","address"],
    s.cs.map(c=>{const io=c.io||{};const lat=Math.max(io.read_latency||0,io.write_latency||0);
    return {attrs:' data-id="'+c.id+'" data-status="'+esc(c.status)+'"',cells:[cell("CS#"+c.id),
    cell(c.status,c.status),cell(human(c.total),"num"),cell(human(c.free),"num"),cell(c.replicas,"num"),
    cell(human(io.read_bps||0),"num"),cell(human(io.write_bps||0),"num"),cell((lat*1000).toFixed(2)+" ms","num"),
    cell(c.load||0,"num"),cell(c.host),cell(c.addr)]};}));
  table("clients",["client"],s.clients.map(c=>({cells:[cell(c.name)]})));
  table("events",["#","time","level","what happened"],d.events.slice().reverse().map(e=>({cells:[cell(e.seq,"num"),
    cell(new Date(e.time*1000).toLocaleTimeString()),cell(e.level,e.level==="info"?"":e.level==="warning"?
    "degraded":"error"),cell(e.message)]})));}
async function tick(){try{const r=await fetch("/api/stat",{cache:"no-store"});const d=await r.json();
  if(!r.ok){const st=document.getElementById("status");st.textContent=d.error+(d.master?" (master: "+d.master+")":"");
  st.className="badge error";}else render(d);}catch(e){const st=document.getElementById("status");
  st.textContent="unreachable";st.className="badge error";}}
tick();setInterval(tick,1000);
</script></body></html>
"""
