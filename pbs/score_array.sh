#!/bin/bash
# Score a large CSV in shards, one shard per array element (predictions Parquet).
#
#   Torque:        qsub -t 0-1 -v FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   PBS Pro:       qsub -J 0-1 -v FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   Slurm:         sbatch --array=0-1 --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/score_array.sh
#   no scheduler:  bash pbs/score_array.sh
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# FMNIST_SHARDS: number of shards (default: the profile's, 2 in quick, 4 in full); the
# array must be 0..SHARDS-1 (FMNIST_SHARDS=8 with -t/-J/--array 0-7). The shard is the
# array index (PBS_ARRAYID, PBS_ARRAY_INDEX, SLURM_ARRAY_TASK_ID); outside an array job
# every shard runs in turn.
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
# Resources: one node, 2 CPUs (`select` is PBS Pro's form; Torque reads it as one CPU,
# so add -l nodes=1:ppn=2 there); `fmnist-batch submit` adds each node type's request,
# which replaces this one. FMNIST_UMASK: the umask of the job's files (default 022).
#PBS -N score
#PBS -l walltime=02:00:00
#PBS -l select=1:ncpus=2
#PBS -j oe
#PBS -W umask=022
#SBATCH --job-name=score
#SBATCH --time=02:00:00
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
exec fmnist-batch step score
