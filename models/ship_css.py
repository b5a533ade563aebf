"""The ship report's stylesheet: system fonts, one content column, quiet tables, green/red
status, gallery tiles in a wrapping grid; prints cleanly too."""

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d8dee4; --soft:#f6f8fa; --accent:#0969da;
  --ok:#1a7f37; --ok-bg:#dafbe1; --bad:#cf222e; --bad-bg:#ffebe9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Liberation Sans",
  Helvetica, Arial, sans-serif, "Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji"; }
.wrap { max-width: 1180px; margin: 0 auto; padding: 0 28px; }
header { background: linear-gradient(135deg, #0d1117, #1f2a44); color: #fff;
  padding: 26px 0 22px; }
header h1 { margin: 2px 0 6px; font-size: 28px; font-weight: 650; letter-spacing: -0.01em; }
.kicker { margin: 0; text-transform: uppercase; letter-spacing: .12em; font-size: 12px;
  color: #9fb3d1; }
.meta { margin: 0 0 14px; color: #c9d4e3; font-size: 13px; }
.meta code { color: #fff; background: rgba(255,255,255,.1); }
.tag { display: inline-block; font-size: 13px; font-weight: 600; padding: 2px 9px;
  margin-left: 6px; border-radius: 999px; background: rgba(255,255,255,.14);
  vertical-align: middle; }
.verdict { display: inline-block; padding: 8px 14px; border-radius: 8px; font-size: 15px; }
.verdict.ok { background: var(--ok-bg); color: var(--ok); }
.verdict.bad { background: var(--bad-bg); color: var(--bad); }
section { padding: 22px 0 8px; border-bottom: 1px solid var(--line); }
h2 { font-size: 21px; margin: 0 0 12px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
h4 { font-size: 15px; margin: 16px 0 6px; text-transform: capitalize; }
p { margin: 6px 0 10px; }
code { font: 12.5px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, monospace;
  background: var(--soft); padding: 1px 5px; border-radius: 4px; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; margin: 6px 0 14px; font-size: 14px; }
th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12.5px;
  text-transform: uppercase; letter-spacing: .04em; border-bottom: 2px solid var(--line);
  padding: 7px 10px; }
td { padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
table.num td { font-variant-numeric: tabular-nums; }
table.kv td:first-child { width: 30%; color: var(--muted); }
table.kv thead { display: none; }
table.checklist td.status { width: 34px; font-size: 19px; text-align: center; }
table.checklist td.item { width: 30%; font-weight: 600; }
table.checklist tr.ok td.item a { color: var(--ok); }
table.checklist tr.bad td.item a { color: var(--bad); }
table.checklist tr.bad td { background: #fff8f7; }
.bars td { white-space: nowrap; }
.num { display: inline-block; width: 44px; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; width: 90px; height: 7px; border-radius: 4px;
  background: #eaeef2; vertical-align: middle; margin-left: 6px; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
.kpis { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; margin: 12px 0; }
.kpi { border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px;
  background: var(--soft); }
.kpi-value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.kpi-label { font-size: 13px; font-weight: 600; }
.kpi-note { font-size: 12px; color: var(--muted); }
.two { display: grid; grid-template-columns: 1fr 1.6fr; gap: 28px; }
img.plot { display: block; max-width: 100%; margin: 10px 0 16px; border: 1px solid var(--line);
  border-radius: 6px; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; font-size: 13px; }
.key i { display: inline-block; width: 18px; height: 12px; border: 3px solid;
  margin-right: 6px; vertical-align: -2px; }
.group { margin: 4px 0 14px; }
.group-title { font-size: 13px; color: var(--muted); margin: 4px 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, 240px);
  gap: 14px; }
figure.tile { margin: 0; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
  background: #fff; box-shadow: 0 1px 2px rgba(31,35,40,.06); }
figure.tile img { display: block; width: 100%; height: auto; background: #000; }
figure.tile.fp { border-top: 4px solid #d62728; }
figure.tile.fn { border-top: 4px solid #ff7f0e; }
figcaption { padding: 8px 10px 10px; font-size: 12.5px; line-height: 1.45; }
footer { padding: 18px 0 40px; color: var(--muted); font-size: 13px; }
@media (max-width: 900px) { .kpis { grid-template-columns: repeat(2, 1fr); }
  .two { grid-template-columns: 1fr; } }
@media print { header { background: #fff; color: var(--ink); } .meta, .kicker { color: #444; }
  figure.tile { break-inside: avoid; } }
"""
