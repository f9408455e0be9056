#!/usr/bin/env bash
# Build the Beacon image, push it to ECR and deploy infra/aws/beacon.yaml with it.
# Run `infra/aws/deploy.sh --help` for the options.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: infra/aws/deploy.sh [options]

Builds the image from the repository root, pushes it to an ECR repository (created when
missing, immutable tags, scan on push), then creates or updates the CloudFormation stack
with the pushed image's digest.

First deployment (the network parameters are required once; later runs reuse them):
  infra/aws/deploy.sh --region eu-central-1 --vpc vpc-0abc \
    --public-subnets subnet-1a,subnet-1b --private-subnets subnet-2a,subnet-2b \
    --certificate arn:aws:acm:eu-central-1:123456789012:certificate/...

Options:
  --stack NAME             stack name (default: beacon)
  --region REGION          AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the CLI profile)
  --vpc VPC_ID             existing VPC
  --public-subnets IDS     comma-separated subnets for the load balancer (two or more AZs)
  --private-subnets IDS    comma-separated subnets for tasks and cache (two or more AZs)
  --certificate ARN        ACM certificate: adds the HTTPS listener and redirects HTTP to it
  --repository NAME        ECR repository (default: beacon)
  --tag TAG                image tag (default: short commit id, plus -dirty-TIME if the tree has changes)
  --arch amd64|arm64       image and task CPU architecture (default: amd64)
  --param KEY=VALUE        any other template parameter, e.g. --param MaxCount=20 (repeatable)
  --skip-build             deploy an image already pushed under --tag
  -h, --help               show this help

Needs: aws (v2), docker with buildx, git. Credentials come from the usual AWS CLI sources.
EOF
}

die() {
  echo "deploy.sh: $*" >&2
  exit 1
}

need_value() {
  # $1 = option name, $2 = number of remaining arguments including the option
  [[ $2 -ge 2 ]] || die "$1 needs a value (see --help)"
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
template="$root/infra/aws/beacon.yaml"

stack=beacon
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
vpc=""
public_subnets=""
private_subnets=""
certificate=""
repository=beacon
tag=""
arch=amd64
skip_build=false
extra_params=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --stack) need_value "$1" $#; stack=$2; shift 2 ;;
    --region) need_value "$1" $#; region=$2; shift 2 ;;
    --vpc) need_value "$1" $#; vpc=$2; shift 2 ;;
    --public-subnets) need_value "$1" $#; public_subnets=$2; shift 2 ;;
    --private-subnets) need_value "$1" $#; private_subnets=$2; shift 2 ;;
    --certificate) need_value "$1" $#; certificate=$2; shift 2 ;;
    --repository) need_value "$1" $#; repository=$2; shift 2 ;;
    --tag) need_value "$1" $#; tag=$2; shift 2 ;;
    --arch) need_value "$1" $#; arch=$2; shift 2 ;;
    --param) need_value "$1" $#; extra_params+=("$2"); shift 2 ;;
    --skip-build) skip_build=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

case "$arch" in
  amd64) cpu_architecture=X86_64 ;;
  arm64) cpu_architecture=ARM64 ;;
  *) die "--arch must be amd64 or arm64, not '$arch'" ;;
esac

for cmd in aws git; do
  command -v "$cmd" >/dev/null || die "'$cmd' is not installed"
done
if [[ $skip_build == false ]]; then
  command -v docker >/dev/null || die "'docker' is not installed"
  docker buildx version >/dev/null 2>&1 || die "docker buildx is required"
fi

if [[ -z $region ]]; then
  region=$(aws configure get region || true)
fi
[[ -n $region ]] || die "no region: pass --region or set AWS_REGION"
export AWS_REGION=$region

if [[ -z $tag ]]; then
  tag=$(git -C "$root" rev-parse --short=12 HEAD)
  if [[ -n $(git -C "$root" status --porcelain) ]]; then
    # Tags are immutable in the repository: a build of uncommitted changes gets its own.
    tag="$tag-dirty-$(date -u +%Y%m%dT%H%M%SZ)"
  fi
fi

account=$(aws sts get-caller-identity --query Account --output text)
registry="$account.dkr.ecr.$region.amazonaws.com"
image="$registry/$repository"

stack_exists=false
if aws cloudformation describe-stacks --stack-name "$stack" >/dev/null 2>&1; then
  stack_exists=true
fi
if [[ $stack_exists == false ]]; then
  [[ -n $vpc && -n $public_subnets && -n $private_subnets ]] ||
    die "stack '$stack' does not exist yet: --vpc, --public-subnets and --private-subnets are required"
fi

if [[ $skip_build == false ]]; then
  if ! aws ecr describe-repositories --repository-names "$repository" >/dev/null 2>&1; then
    echo "==> creating ECR repository $repository"
    aws ecr create-repository \
      --repository-name "$repository" \
      --image-tag-mutability IMMUTABLE \
      --image-scanning-configuration scanOnPush=true \
      --encryption-configuration encryptionType=AES256 >/dev/null
  fi

  echo "==> logging in to $registry"
  aws ecr get-login-password | docker login --username AWS --password-stdin "$registry"

  echo "==> building and pushing $image:$tag (linux/$arch)"
  docker buildx build \
    --platform "linux/$arch" \
    --build-arg "VERSION=$tag" \
    --build-arg "REVISION=$(git -C "$root" rev-parse HEAD)" \
    --tag "$image:$tag" \
    --push \
    "$root"
fi

digest=$(aws ecr describe-images \
  --repository-name "$repository" \
  --image-ids "imageTag=$tag" \
  --query 'imageDetails[0].imageDigest' \
  --output text)
[[ $digest == sha256:* ]] || die "no image tagged '$tag' in $repository"
image_uri="$image@$digest"

params=("ImageUri=$image_uri" "CpuArchitecture=$cpu_architecture")
[[ -n $vpc ]] && params+=("VpcId=$vpc")
[[ -n $public_subnets ]] && params+=("PublicSubnetIds=$public_subnets")
[[ -n $private_subnets ]] && params+=("PrivateSubnetIds=$private_subnets")
[[ -n $certificate ]] && params+=("CertificateArn=$certificate")
# (The ${a[@]+...} form keeps bash 3.2, macOS's default, happy with an empty array.)
params+=(${extra_params[@]+"${extra_params[@]}"})

echo "==> deploying stack $stack with $image_uri"
# Parameters not given here keep their previous values on an existing stack.
aws cloudformation deploy \
  --stack-name "$stack" \
  --template-file "$template" \
  --capabilities CAPABILITY_IAM \
  --no-fail-on-empty-changeset \
  --tags app=beacon \
  --parameter-overrides "${params[@]}"

aws cloudformation describe-stacks \
  --stack-name "$stack" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' \
  --output table
