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

{% if kind_rows %}
<h2>Proponent kinds</h2>
<table class="kinds">
<tr><th>Method</th><th>top-k</th>{% for kind in kind_names %}<th>{{ kind }}</th>{% endfor %}<th>Queries</th></tr>
{% for r in kind_rows %}<tr><td>{{ r.method }}</td><td class="num">{{ r.k }}</td>{% for cell in r.cells %}<td class="num">{{ cell }}</td>{% endfor %}<td class="num">{{ r.n_queries }}</td></tr>
{% endfor %}</table>
<p>Share of each kind among a method's top-k proponents, mean ± standard error over the queries
that carry their fact. <em>entails</em>: a gold passage, or one naming the subject and the object
together; <em>object</em>: the answer without the subject; <em>subject</em>: the subject without
the answer; <em>relation</em>: the relation's wording with neither; <em>other</em>: none of these.</p>
{% if kinds_plot %}<img alt="share of each proponent kind per method" src="data:image/png;base64,{{ kinds_plot }}">{% endif %}
{% endif %}

{% if scaling_rows %}
<h2>Scaling study</h2>
<table class="scaling">
<tr>{% for title in scaling_header %}<th>{{ title }}</th>{% endfor %}</tr>
{% for row in scaling_rows %}<tr>{% for cell in row %}<td{% if not loop.first %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p>Mean ± standard error over queries, under each checkpoint. {{ scaling_same }}. Overlap@10:
the share of TrackStar's top 10 that BM25's top 10 also holds (influence found where
attribution looks); entails@10: the share of TrackStar's top 10 that states the fact.
The findings below compare the first and last checkpoint of each axis, paired over queries.</p>
{% if scaling_plot %}<img alt="metrics against training tokens and parameters" src="data:image/png;base64,{{ scaling_plot }}">{% endif %}
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
