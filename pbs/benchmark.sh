#!/bin/bash
# Benchmark every variant of the models on the node this job runs on (timings Parquet).
#
#   Torque, PBS Pro:  qsub -v FMNIST_RUN=$PWD/outputs/quick,FMNIST_PROFILE=quick pbs/benchmark.sh
#   Slurm:            sbatch --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/benchmark.sh
#   no scheduler:     bash pbs/benchmark.sh
# On a node type (jobs/node_types.toml), e.g. icx, with FMNIST_NODE_TYPE=icx in the variables:
#   Torque:   qsub -l nodes=1:icx:ppn=2 ...     PBS Pro:  qsub -l select=1:ncpus=2:cpu_type=icx ...
#   Slurm:    sbatch --constraint=icx ...
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# FMNIST_MODEL: main|backup1|backup2 (default: every model); FMNIST_NODE_TYPE: the node
# type recorded in the timings (skl|clx|icx|spr|local, see jobs/node_types.toml).
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
# Resources: one node, 2 CPUs (`select` is PBS Pro's form; Torque reads it as one CPU,
# so add -l nodes=1:ppn=2 there); `fmnist-batch submit` adds each node type's request,
# which replaces this one. FMNIST_UMASK: the umask of the job's files (default 022).
#PBS -N benchmark
#PBS -l walltime=01:00:00
#PBS -l select=1:ncpus=2
#PBS -j oe
#PBS -W umask=022
#SBATCH --job-name=benchmark
#SBATCH --time=01:00:00
#SBATCH --nodes=1
# The same in Slurm's words: one node, 2 CPUs.
#SBATCH --ntasks=2
#SBATCH --output=%x.o%j
set -e
# Files the team can read: the umask `fmnist-batch submit` passes, else Slurm's copy of
# the submitter's, else 022 (PBS jobs start with 077).
umask "${FMNIST_UMASK:-${SLURM_UMASK:-022}}"
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}"
source "${FMNIST_VENV:-.venv}/bin/activate"
exec fmnist-batch step benchmark
