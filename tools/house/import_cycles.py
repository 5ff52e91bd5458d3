"""Module dependency graph of a crate's src/ from every `crate::` / `super::` path (in
`use` lines and inline, test modules left out), at the granularity of files (modules);
prints strongly connected components of size > 1 (import cycles) at file level and at
top-level-module level, and exits 1 if there is one. Usage: import_cycles.py CRATE/src"""
import os, re, sys
root = sys.argv[1]
files = {}
for d, _, fs in os.walk(root):
    for f in fs:
        if f.endswith('.rs'):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'lib', 'main'):
                rel = rel[:-1]
            files['::'.join(rel)] = open(p).read()
mods = set(files)
def resolve(path):
    # longest prefix that is a module file
    parts = path.split('::')
    for i in range(len(parts), 0, -1):
        m = '::'.join(parts[:i])
        if m in mods:
            return m
    return None
edges = {m: set() for m in mods}
for m, src in files.items():
    # strip comments and cfg(test) modules
    src = re.sub(r'//[^\n]*', '', src)
    i = src.find('#[cfg(test)]\nmod tests')
    if i >= 0: src = src[:i]
    for mm in re.finditer(r'\b(crate|super)::((?:\w+::)*\w+|\{[^}]*\})', src):
        kind, rest = mm.group(1), mm.group(2)
        base = [] if kind == 'crate' else m.split('::')[:-1] if m else []
        # handle `crate::{a, b::c}` groups (one level)
        if rest.startswith('{'):
            items = [x.strip() for x in rest[1:-1].split(',') if x.strip()]
        else:
            items = [rest]
        for it in items:
            it = it.split(' as ')[0].strip().lstrip('{').strip()
            path = '::'.join(base + [it]) if it else '::'.join(base)
            t = resolve(path.rstrip(':'))
            if t is not None and t != m and t != '':
                edges[m].add(t)
def scc(nodes, edges):
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def go(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in idx: go(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    for v in nodes:
        if v not in idx: go(v)
    return [x for x in out if len(x) > 1]
def top(m): return m.split('::')[0]
# top-level graph ignores a module's edges into its own children/parent
tedges = {}
for m, ts in edges.items():
    for t in ts:
        if top(m) != top(t):
            tedges.setdefault(top(m), set()).add(top(t))
nedges = sum(len(v) for v in edges.values())
print(f'{root}: {len(mods)} modules, {nedges} module-to-module edges')
file_cycles = scc(sorted(mods), edges)
top_cycles = scc(sorted({top(m) for m in mods}), tedges)
print('  file-level cycles:', file_cycles or 'none')
print('  top-level cycles:', top_cycles or 'none')
for m in sorted(tedges): print('   ', m or '(root)', '->', ', '.join(sorted(tedges[m])))
sys.exit(1 if file_cycles or top_cycles else 0)
