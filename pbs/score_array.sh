#!/bin/bash
# Score a large CSV in shards, one shard per array element (predictions Parquet).
#
#   Torque:        qsub -t 0-3 -v FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   PBS Pro:       qsub -J 0-3 -v FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   Slurm:         sbatch --array=0-3 --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   no scheduler:  bash pbs/score_array.sh
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# FMNIST_SHARDS: number of shards (default: the profile's); the shard is the array index
# (PBS_ARRAYID, PBS_ARRAY_INDEX, SLURM_ARRAY_TASK_ID); outside an array job every shard
# runs in turn.
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
#PBS -N score
#PBS -l walltime=02:00:00
#PBS -l nodes=1:ppn=2
#PBS -j oe
#SBATCH --job-name=score
#SBATCH --time=02:00:00
#SBATCH --nodes=1
# ppn=2 in Slurm's words (sbatch reads the #PBS lines too): two tasks' worth of CPUs.
#SBATCH --ntasks=2
#SBATCH --output=%x.o%j
set -e
cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-.}}"
source "${FMNIST_VENV:-.venv}/bin/activate"
exec fmnist-batch step score
