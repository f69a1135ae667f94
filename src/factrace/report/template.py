"""The HTML report's jinja2 template: one self-contained page (inline CSS, the plot as base64)."""

REPORT_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.held { color: #1a7f37; } .failed { color: #b42318; } .unsure { color: #8a6d00; }
.unmeasured { color: #777; }
.example { border-top: 1px solid #ddd; margin-top: 1.5em; }
.side { display: flex; gap: 1em; }
.side > div { flex: 1; min-width: 0; }
li.gold, tr.gold { background: #fff4c2; }
.star { color: #b8860b; font-weight: bold; }
.id { font-family: monospace; font-size: 0.9em; }
.meta td { font-size: 0.9em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if metadata %}
<table class="meta">
{% for key, value in metadata %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
{% endif %}

<h2>Results</h2>
<table class="results">
<tr><th>Method</th>{% for title in columns %}<th>{{ title }}</th>{% endfor %}<th>Queries</th>
<th>Tail-patch queries</th></tr>
{% for row in rows %}<tr><td>{{ row.method }}</td>{% for cell in row.cells %}<td class="num">{{ cell }}</td>{% endfor %}<td class="num">{{ row.n_queries }}</td><td class="num">{{ row.n_tail_patch }}</td></tr>
{% endfor %}</table>
<p>Mean ± standard error over queries. MRR and Recall@10 measure attribution (finding the
passages that state the fact); tail-patch measures influence (the rise in p(target | prompt)
after one training step on each of the top 10 passages).</p>

{% if plot %}
<h2>Attribution vs influence</h2>
<img alt="MRR against tail-patch per method" src="data:image/png;base64,{{ plot }}">
{% endif %}

{% if findings %}
<h2>Findings</h2>
<p>A claim held when the difference is at least {{ significant }} combined standard errors in its
favour, did not hold when at least {{ significant }} against it, and is not significant in between.</p>
<ul class="findings">
{% for f in findings %}<li class="{{ f.css }}"><strong>{{ f.verdict }}</strong>: {{ f.claim }}
<br><small>{{ f.evidence }}</small></li>
{% endfor %}</ul>
{% endif %}

{% if examples %}
<h2>Examples</h2>
{% for ex in examples %}
<div class="example">
<h3><span class="id">{{ ex.query_id }}</span>: {{ ex.prompt }}<strong>{{ ex.target }}</strong></h3>
<p>Gold passages:</p>
<ul>
{% for p in ex.gold %}<li class="gold"><span class="id">{{ p.id }}</span> {{ p.text }}</li>
{% else %}<li>none</li>
{% endfor %}</ul>
<div class="side">
{% for method, passages in ex.columns.items() %}<div>
<h4>{{ method }}</h4>
<table>
<tr><th>#</th><th>Passage</th><th>Score</th></tr>
{% for p in passages %}<tr{% if p.gold %} class="gold"{% endif %}><td class="num">{{ loop.index }}</td>
<td>{% if p.gold %}<span class="star" title="gold">★</span> {% endif %}<span class="id">{{ p.id }}</span> {{ p.text }}</td>
<td class="num">{% if p.score is not none %}{{ "%.4g"|format(p.score) }}{% endif %}</td></tr>
{% endfor %}</table>
</div>
{% endfor %}</div>
</div>
{% endfor %}
{% endif %}
</body>
</html>
"""
