# The low-data comparison (configs/lowdata.mk) from a shared language prior: before any fine-tune, the base model
# is pretrained as a language model on the pages that random walks see in every split's worlds (`eexp corpus`;
# observations only: no goal, no action, no reward; the N_EVAL test and ood tasks that eval plays are never
# walked). It is the CPU stand-in for the paper's pretrained LM: it knows the words of every category, ood ones
# included, and nothing of which action is right. IL, IWM and SR all fine-tune the same base, so the comparison
# between them stays fair.
#   make -C recipes -j3 seeds CONFIG=configs/prior.mk
include configs/lowdata.mk
OUT            = out/prior
PRETRAIN_STEPS = 1000
CORPUS_WALKS   = 2000
