#!/bin/bash
# Benchmark every variant of the models on the node this job runs on (timings Parquet).
#
#   Torque, PBS Pro:  qsub -v FMNIST_RUN=$PWD/outputs/quick,FMNIST_PROFILE=quick pbs/benchmark.sh
#   Slurm:            sbatch --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/benchmark.sh
#   no scheduler:     bash pbs/benchmark.sh
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# FMNIST_MODEL: main|backup1|backup2 (default: every model); FMNIST_NODE_TYPE: the node
# type recorded in the timings (skl|clx|icx|spr|local, see jobs/node_types.toml).
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
#PBS -N benchmark
#PBS -l walltime=01:00:00
#PBS -l nodes=1:ppn=2
#PBS -j oe
#SBATCH --job-name=benchmark
#SBATCH --time=01:00:00
#SBATCH --nodes=1
# ppn=2 in Slurm's words (sbatch reads the #PBS lines too): two tasks' worth of CPUs.
#SBATCH --ntasks=2
#SBATCH --output=%x.o%j
set -e
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}"
source "${FMNIST_VENV:-.venv}/bin/activate"
exec fmnist-batch step benchmark
