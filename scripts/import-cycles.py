#!/usr/bin/env python3
"""Fails (exit 1) if two files under src/ import each other, directly or through others, or
if two top-level folders (layers: `src/base/`, `src/plan/`, ...) do.

Reads every `crate::...` path (including `use crate::a::{b, c}` groups) and every `super::x`
path of each file, resolves it to the file that defines the module, and reports each strongly
connected component of more than one file (Tarjan). Paths written without `crate::` (after a
`use crate::engine;`, say) are not followed. Run by .ci/run; by hand: scripts/import-cycles.py
"""
import os,re,glob,sys
root=os.path.join(os.path.dirname(os.path.abspath(__file__)),'..','src')+'/'
files={}
for f in glob.glob(root+'**/*.rs', recursive=True):
    rel=f[len(root):-3]
    parts=rel.split('/')
    if parts[-1]=='mod': parts=parts[:-1]
    if parts==['lib'] or parts==['main']: continue
    files['::'.join(parts)]=f
def resolve(path):
    ps=path.split('::')
    for n in range(len(ps),0,-1):
        k='::'.join(ps[:n])
        if k in files: return k
    return None
g={}
for m,f in files.items():
    s=open(f).read()
    s=re.sub(r'//.*','',s)
    deps=set()
    # expand use crate::a::{b, c::d}
    for mm in re.finditer(r'crate::([a-z_:]+)(::\{([^}]*)\})?', s):
        base=mm.group(1).rstrip(':')
        if mm.group(3):
            for item in mm.group(3).split(','):
                item=item.strip().split(' as ')[0]
                if not item: continue
                r=resolve(base+'::'+item.replace('self','').strip(':')) if item!='self' else resolve(base)
                if r: deps.add(r)
        else:
            r=resolve(base)
            if r: deps.add(r)
    # super:: references
    parent=m.rsplit('::',1)[0] if '::' in m else ''
    if files[m].endswith('mod.rs'): parent=m
    for mm in re.finditer(r'super::([a-z_]+)', s):
        base=(parent+'::'+mm.group(1)) if parent else mm.group(1)
        if files[m].endswith('mod.rs'):
            base=(m.rsplit('::',1)[0]+'::'+mm.group(1)) if '::' in m else mm.group(1)
        r=resolve(base)
        if r: deps.add(r)
    deps.discard(m)
    # a module depending on its own submodule or parent is not a cycle worth reporting: drop parent links
    g[m]=deps
index={};low={};stack=[];on=set();res=[];i=[0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v]=low[v]=i[0];i[0]+=1;stack.append(v);on.add(v)
    for w in g.get(v,()):
        if w not in index: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],index[w])
    if low[v]==index[v]:
        comp=[]
        while True:
            w=stack.pop();on.discard(w);comp.append(w)
            if w==v:break
        res.append(comp)
for v in g:
    if v not in index: sc(v)
bad=False
for c in res:
    if len(c)>1:
        bad=True
        print('import cycle among src/ modules:', sorted(c))
        for a in sorted(c): print('  ',a,'->',sorted(x for x in g[a] if x in c))
# Folder level: each module belongs to its top-level folder (`engine::catalog::list` to
# `engine`); a dependency between two folders is an edge; any cycle among folders fails.
def top(m): return m.split('::')[0]
fg={}
why={}
for a,ds in g.items():
    for b in ds:
        if top(a)!=top(b):
            fg.setdefault(top(a),set()).add(top(b))
            why.setdefault((top(a),top(b)),[]).append('%s -> %s'%(a,b))
index.clear();low.clear();stack.clear();on.clear();res.clear();i[0]=0
g_saved=g
g=fg
for v in list(fg):
    if v not in index: sc(v)
for c in res:
    if len(c)>1:
        bad=True
        print('import cycle among src/ folders:', sorted(c))
        for a in sorted(c):
            for b in sorted(fg[a]):
                if b in c: print('   %s -> %s: %s'%(a,b,', '.join(sorted(why[(a,b)])[:4])))
g=g_saved
if bad:
    sys.exit(1)
folders=sorted(set(top(m) for m in g))
print('import-cycles: %d modules in %d folders, no cycle between files or folders' % (len(g),len(folders)))
