R=$PWD; cd /tmp && tar xJf $R/gpucarry/bundle.txz
L=$OUT/log.txt; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $L
for K in flash_fwd_wgmma_ws_n64_bf16_hdim64; do
  echo "== tests $K $(date +%T)" | tee -a $L
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=150 timeout 40 ./bundle/tests/gpu forward 2>&1 | grep -E "cases passed|test result|minimal|Test failed" | head -4 | tee -a $L
  FLASH_ATTN_KERNELS=$K timeout 30 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 ./bundle/bin/demo --batch 1 --heads 2 --iters 1 --seqlen 1000 --head-dim 64 --causal 2>&1 | tail -1 | tee -a $L
  FLASH_ATTN_KERNELS=$K timeout 40 compute-sanitizer --tool racecheck --error-exitcode 9 ./bundle/bin/demo --batch 1 --heads 2 --iters 1 --seqlen 300 --head-dim 64 2>&1 | tail -1 | tee -a $L
done
S="--head-dims 64 --dtypes bf16 --seqlens 512,2048,4096,16384"
for r in 1 2; do
  timeout 30 ./bundle/bin/bench $S --out $OUT/def_$r.jsonl > /dev/null 2>&1
  timeout 30 ./bundle/bin/bench $S --kernel flash_fwd_wgmma_ws_n64_bf16_hdim64 --out $OUT/wsn_$r.jsonl > /dev/null 2>&1
done
python3 - $OUT <<'PY' | tee -a $L
import json,glob,sys
rows={}
for f in sorted(glob.glob(sys.argv[1]+'/*_?.jsonl')):
    k=f.split('/')[-1].split('_')[0]
    for l in open(f):
        r=json.loads(l)
        if r['direction']=='fwd': rows.setdefault((r['causal'],r['seqlen']),{}).setdefault(k,[]).append(r['ours_tflops'])
print('| causal | seqlen | default (1 warpgroup, 4 blocks/SM) | ws, 128-key tiles | ws, 64-key tiles | ws128/default | ws64/default |')
print('|---|---|---|---|---|---|---|')
for key in sorted(rows):
    d=rows[key]; f=lambda k: ' / '.join('%.1f'%x for x in d.get(k,[])) or '-'
    g=lambda k: '%.3f'%(max(d[k])/max(d['def'])) if k in d and 'def' in d else '-'
    print(f"| {'yes' if key[0] else 'no'} | {key[1]} | {f('def')} | {f('ws')} | {f('wsn')} | {g('ws')} | {g('wsn')} |")
PY
echo "== done $(date +%T)" | tee -a $L
