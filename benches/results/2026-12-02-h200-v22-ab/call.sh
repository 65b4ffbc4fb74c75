R=$PWD; cd /tmp && tar xJf $R/gpucarry/bundle.txz
L=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
S="--dtypes bf16 --seqlens 512,2048,4096,16384"
W="flash_fwd_wgmma_ws_bf16_hdim256"
echo "== bench A/B $(date +%T)" | tee -a $L
for r in 1 2; do
 timeout 100 ./bundle/bin/bench --head-dims 96,128 $S --kernel flash_fwd_wgmma_bf16_hdim128,flash_fwd_wgmma_bf16_hdim96 --out $OUT/old_$r.jsonl > /dev/null 2>&1
 timeout 100 ./bundle/bin/bench --head-dims 96,128 $S --out $OUT/ws_$r.jsonl > /dev/null 2>&1
 timeout 100 ./bundle/bin/bench --head-dims 128 $S --kernel flash_fwd_wgmma_ws_pp_bf16_hdim128 --out $OUT/pp_$r.jsonl > /dev/null 2>&1
 timeout 100 ./bundle/bin/bench --head-dims 192,256 $S --out $OUT/old_big_$r.jsonl > /dev/null 2>&1
 timeout 100 ./bundle/bin/bench --head-dims 192,256 $S --kernel $W --out $OUT/ws_big_$r.jsonl > /dev/null 2>&1
done
python3 - $OUT <<'PY' | tee -a $L
import json,glob,sys
rows={}
for f in sorted(glob.glob(sys.argv[1]+'/*_?.jsonl')):
    k=f.split('/')[-1].split('_')[0]
    for l in open(f):
        r=json.loads(l)
        if r['direction']=='fwd': rows.setdefault((r['head_dim'],r['causal'],r['seqlen']),{}).setdefault(k,[]).append(r['ours_tflops'])
print('| d | causal | seqlen | before (v20) | ws | ws ping-pong | ws/before | pp/ws |')
print('|---|---|---|---|---|---|---|---|')
for key in sorted(rows):
    d=rows[key]; f=lambda k: ' / '.join('%.1f'%x for x in d.get(k,[])) or '-'
    r1=max(d['ws'])/max(d['old']) if 'ws' in d and 'old' in d else 0
    r2=max(d['pp'])/max(d['ws']) if 'pp' in d and 'ws' in d else 0
    print(f"| {key[0]} | {'yes' if key[1] else 'no'} | {key[2]} | {f('old')} | {f('ws')} | {f('pp')} | {r1:.3f} | {r2:.3f} |")
PY
echo "== tests $(date +%T)" | tee -a $L
FLASH_ATTN_FWD_CASES=300 timeout 150 ./bundle/tests/gpu forward 2>&1 | tail -3 | tee -a $L
FLASH_ATTN_VARLEN_CASES=80 timeout 120 ./bundle/tests/gpu varlen 2>&1 | tail -3 | tee -a $L
FLASH_ATTN_KVCACHE_CASES=80 FLASH_ATTN_APPEND_CASES=60 timeout 150 ./bundle/tests/gpu kvcache 2>&1 | tail -3 | tee -a $L
K=flash_fwd_wgmma_ws_pp_bf16_hdim128
for d in 256; do for t in bf16 f16; do for f in "" _seq; do K=$K,flash_fwd_wgmma_ws_${t}_hdim${d}$f; done; done; done
FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=300 timeout 150 ./bundle/tests/gpu forward 2>&1 | tail -3 | tee -a $L
FLASH_ATTN_KERNELS=$K FLASH_ATTN_VARLEN_CASES=60 timeout 120 ./bundle/tests/gpu varlen 2>&1 | tail -3 | tee -a $L
FLASH_ATTN_KERNELS=$K FLASH_ATTN_KVCACHE_CASES=60 timeout 120 ./bundle/tests/gpu kvcache_matches 2>&1 | tail -3 | tee -a $L
echo "== sanitize $(date +%T)" | tee -a $L
D="./bundle/bin/demo --batch 1 --heads 2 --iters 1"
san() { echo "-- $1 [$2] $3" | tee -a $L; FLASH_ATTN_KERNELS=$2 timeout 120 compute-sanitizer --tool $1 --error-exitcode 9 $D $3 2>&1 | tail -2 | tee -a $L; }
san memcheck "" "--seqlen 1000 --head-dim 128"
san racecheck "" "--seqlen 300 --head-dim 128 --causal"
san synccheck "" "--seqlen 300 --head-dim 128 --causal"
san memcheck flash_fwd_wgmma_ws_pp_bf16_hdim128 "--seqlen 1000 --head-dim 128 --causal"
san racecheck flash_fwd_wgmma_ws_pp_bf16_hdim128 "--seqlen 300 --head-dim 128"
san memcheck flash_fwd_wgmma_ws_bf16_hdim256 "--seqlen 1000 --head-dim 256 --causal"
san racecheck flash_fwd_wgmma_ws_bf16_hdim256 "--seqlen 300 --head-dim 256 --causal"
echo "== done $(date +%T)" | tee -a $L
