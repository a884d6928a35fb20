import torch, time
from gsit.graph import *
from gsit.attention import graph_attention
from gsit.attention.reference import attention_weights
from gsit.attention.triton.function import fused_graph_attention, dropout_keep_mask, small_tiles, TileConfig
M=("text","vision","audio"); L=(46,96,71); n=sum(L); d=64; B,H=2,4
vl=torch.tensor([[46,96,71],[30,0,50]],device="cuda")
mask=GraphMask(ModalGraph.named("bidirectional",M),SequenceLayout(M,L),vl)
g=torch.Generator(device="cuda").manual_seed(2)
def run(fn,q,k,v,do):
    q,k,v=[t.detach().clone().requires_grad_() for t in (q,k,v)]
    o=fn(q,k,v); gr=torch.autograd.grad(o,(q,k,v),do); return [o.float()]+[x.float() for x in gr]
def low(q,k,v,keep,p):
    allowed=mask.dense_mask("cuda")[:,None]; has=allowed.any(-1,keepdim=True)
    s=(torch.matmul(q,k.transpose(-1,-2))*d**-0.5).masked_fill(~allowed,float("-inf"))
    pr=torch.softmax(s.masked_fill(~has,0.),-1)*has
    return torch.matmul(pr*keep/(1-p),v)
for dt in (torch.bfloat16, torch.float16):
  q,k,v,do=[torch.randn(B,H,n,d,device="cuda",generator=g).to(dt) for _ in range(4)]
  for p in (0.0, 0.2):
    keep=dropout_keep_mask(B*H,n,p,77,"cuda").view(B,H,n,n) if p>0 else torch.ones(B,H,n,n,dtype=torch.bool,device="cuda")
    ref=run(lambda q,k,v: torch.matmul(attention_weights(q,k,mask,scale=d**-0.5)*keep/(1-p),v.float()),q.float(),k.float(),v.float(),do.float())
    lo=run(lambda q,k,v: low(q,k,v,keep,p),q,k,v,do)
    rows=[("eager",lo)]
    for name,cfg in (("default",None),("t32",small_tiles(32,32)),("t16",small_tiles(16,16))):
        c=cfg if cfg is None else TileConfig(cfg.fwd_m,cfg.fwd_n,4,2,cfg.dkdv_m,cfg.dkdv_n,4,2,cfg.dq_m,cfg.dq_n,4,2)
        rows.append((name,run(lambda q,k,v: fused_graph_attention(q,k,v,mask,dropout_p=p,seed=77,config=c),q,k,v,do)))
    if p==0: rows.append(("pairs",run(lambda q,k,v: graph_attention(q,k,v,mask,backend="pairs"),q,k,v,do)))
    for name,res in rows:
        print(dt,p,f"{name:8s}"," ".join(f"{nm} {(t-r).abs().max().item():.2e}" for nm,r,t in zip(("o","dq","dk","dv"),ref,res)))
# overhead
L=(46,496,371); B,H,D=32,8,32
mk=GraphMask(ModalGraph.named("forward",M),SequenceLayout(M,L),torch.tensor([[20,50,37]]*B,device="cuda"))
q,k,v,do=[torch.randn(B,H,sum(L),D,device="cuda",dtype=torch.bfloat16) for _ in range(4)]
for t in (q,k,v): t.requires_grad_()
def f(): return torch.autograd.grad(graph_attention(q,k,v,mk,backend="triton"),(q,k,v),do)
def fp(): return torch.autograd.grad(graph_attention(q,k,v,mk,backend="pairs"),(q,k,v),do)
def g_():
    with torch.no_grad(): graph_attention(q,k,v,mk,backend="triton")
for fn in (f,g_,fp):
    for _ in range(5): fn()
    torch.cuda.synchronize(); t=time.perf_counter()
    for _ in range(100): fn()
    c=time.perf_counter()-t; torch.cuda.synchronize(); w=time.perf_counter()-t
    print(fn.__name__,"cpu per call ms %.3f wall %.3f"%(c*10, w*10))
