# IWM and SR data dreamed by a world model against the same data from the real environment, on CPU
# (`make -C recipes -j2 seeds CONFIG=configs/dream.mk`): the demo at its low-data point (configs/lowdata.mk), per seed
# IL, IWM and SR as there, a world model WM (3 epochs of the seed's own IWM data from the base), and IWM-dream and
# SR-dream trained as IWM and SR but on data from expert, branch and rollout in dream:WM@shop; every row evaluated in
# the real shop, 3 seeds pooled with the seed-level statistics.
include configs/lowdata.mk
OUT          = out/dream
DREAM_ROWS   = IWM-dream SR-dream
WM_EPOCHS    = 3
# the question is real against dreamed data at one budget: IWM-dream and SR-dream train exactly as IWM and SR, so
# the compute-matched and extra eval rows are left out, and only test is evaluated (lowdata's combo split too costs
# a third more evaluation)
MATCHED_ROWS =
ACTOBS_ROW   =
SCORE_ROWS   =
SPLITS       = test
