"""Warp-stall reasons of one kernel from Nsight Compute's source page, per SASS instruction.

usage: python3 scripts/ncu_stalls.py KERNEL.sass.csv.gz [TOP]
The input is `ncu --import R.ncu-rep --page source --print-source sass --csv | gzip` (see
benches/profile.sh). Prints the stall reasons summed over the kernel (share of all samples), then
the TOP instructions (default 40) with the most samples and their three largest reasons.
"""
import csv, gzip, sys, collections
rows = list(csv.reader(gzip.open(sys.argv[1], 'rt')))
hdr = rows[1]; data = rows[2:]
idx = {h:i for i,h in enumerate(hdr)}
stall_cols = [h for h in hdr if h.startswith('stall_') or 'Stall' in h and h not in ('Warp Stall Sampling (All Samples)','Warp Stall Sampling (Not-issued Samples)')]
tot = collections.Counter()
allS = 0
for r in data:
    try: allS += int(r[idx['Warp Stall Sampling (All Samples)']])
    except: pass
    for h in stall_cols:
        try: tot[h] += float(r[idx[h]])
        except: pass
print('total samples', allS)
for h,v in tot.most_common(25): print(f'{h:60s} {v:10.0f} {100*v/allS:5.1f}%')
print()
top = sorted(data, key=lambda r: -int(r[idx['Warp Stall Sampling (All Samples)']] or 0))[:int(sys.argv[2]) if len(sys.argv)>2 else 40]
for r in top:
    s = int(r[idx['Warp Stall Sampling (All Samples)']])
    reasons = sorted(((float(r[idx[h]] or 0),h) for h in stall_cols), reverse=True)[:3]
    print(f"{r[0][-5:]} {s:7d} {100*s/allS:5.1f}% {r[1].strip()[:70]:70s} " + ' '.join(f'{h.replace("stall_","")}={v:.0f}' for v,h in reasons if v>0))
