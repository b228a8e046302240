#!/bin/bash
# Write the CSV the score step reads (Kaggle format, test split; the profile sizes it).
#
#   Torque, PBS Pro:  qsub -v FMNIST_RUN=$PWD/outputs/quick,FMNIST_PROFILE=quick pbs/score_input.sh
#   Slurm:            sbatch --export=ALL,FMNIST_RUN=$PWD/outputs/quick pbs/score_input.sh
#   no scheduler:     bash pbs/score_input.sh
#
# FMNIST_RUN: run directory (default outputs/<profile>); FMNIST_PROFILE: quick|full (default
# quick); FMNIST_VENV: the project's virtualenv (default .venv).
# The command's arguments come from the profile in jobs/pipeline.toml (`fmnist-batch step`),
# so this job does exactly what `fmnist-batch run` does for the same task.
# Resources: one node, 2 CPUs (`select` is PBS Pro's form; Torque reads it as one CPU,
# so add -l nodes=1:ppn=2 there); `fmnist-batch submit` adds each node type's request,
# which replaces this one. FMNIST_UMASK: the umask of the job's files (default 022).
#PBS -N score-input
#PBS -l walltime=00:15:00
#PBS -l select=1:ncpus=2
#PBS -j oe
#PBS -W umask=022
#SBATCH --job-name=score-input
#SBATCH --time=00:15:00
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
exec fmnist-batch step score-input
